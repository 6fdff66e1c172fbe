"""Client for the Ledger service: a small library and a command line.

Library: `LedgerClient(host, port, timeout)` has one typed method per RPC.
Command line: `python client.py create-account alice`, `python client.py
--help`. It speaks the server's framed binary protocol over one connection,
which it discards after any transport error or timeout, because the reply to
a timed-out call may still arrive and would be read as the next call's reply.
"""

import argparse
import json
import select
import socket
import sys
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import thriftpy2
from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TClient
from thriftpy2.transport import TCyFramedTransport, TSocket, TTransportException

import settings as settings_module

ledger_thrift = thriftpy2.load(str(Path(__file__).with_name("service.thrift")), module_name="ledger_thrift")
Account = ledger_thrift.Account
Transfer = ledger_thrift.Transfer

# Exit statuses of the command line, one per kind of failure.
EXIT_STATUS = {
    ledger_thrift.InvalidArgument: 3,
    ledger_thrift.NotFound: 4,
    ledger_thrift.Conflict: 5,
    ledger_thrift.InsufficientFunds: 6,
    ledger_thrift.Unavailable: 7,
}
EXIT_UNREACHABLE = 8
EXIT_INTERNAL = 1
EXIT_USAGE = 2


class ServerUnreachable(Exception):
    """The server could not be reached, or did not reply within the timeout."""


def new_request_id() -> str:
    """A fresh request id; reuse it to retry the same write safely."""
    return uuid.uuid4().hex


def _closed_by_server(sock: socket.socket) -> bool:
    """True if an idle connection is readable: the server closed it (idle
    timeout, restart) or sent bytes nobody asked for. Either way, discard it."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class LedgerClient:
    """Calls the Ledger service over one connection, reopened after failures.

    Safe to share between threads (calls are serialized). A service error
    (NotFound, InvalidArgument, ...) leaves the connection open; a transport
    error or timeout closes it and raises ServerUnreachable.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._lock = threading.Lock()
        self._client: TClient | None = None
        self._socket: TSocket | None = None

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next call opens a new one."""
        with self._lock:
            self._discard()

    def _discard(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _call(self, method: str, *args: object):
        with self._lock:
            try:
                if self._client is not None and _closed_by_server(self._socket.sock):
                    self._discard()
                if self._client is None:
                    milliseconds = int(self.timeout * 1000)
                    self._socket = TSocket(
                        self.host, self.port, socket_timeout=milliseconds, connect_timeout=milliseconds
                    )
                    transport = TCyFramedTransport(self._socket)
                    transport.open()
                    self._client = TClient(ledger_thrift.Ledger, TCyBinaryProtocol(transport))
                return getattr(self._client, method)(*args)
            except (TTransportException, OSError) as error:
                self._discard()
                reason = getattr(error, "message", None) or str(error) or type(error).__name__
                raise ServerUnreachable(f"{self.host}:{self.port} ({reason})") from None

    def ping(self) -> str:
        """Returns "pong" when the server answers."""
        return self._call("ping")

    def health(self) -> ledger_thrift.Health:
        """Whether the server is serving (not draining) and its database answers."""
        return self._call("health")

    def create_account(self, owner: str, request_id: str | None = None) -> Account:
        """Open an account with a zero balance."""
        return self._call("create_account", owner, request_id or new_request_id())

    def get_account(self, account_id: int) -> Account:
        """One account; NotFound if there is none with that id."""
        return self._call("get_account", account_id)

    def list_accounts(self, limit: int = 100, cursor: str = "") -> ledger_thrift.AccountPage:
        """A page of accounts by id; pass next_cursor back for the next page."""
        return self._call("list_accounts", limit, cursor)

    def deposit(self, account_id: int, amount: int, request_id: str | None = None) -> Transfer:
        """Add `amount` minor units to an open account."""
        return self._call("deposit", account_id, amount, request_id or new_request_id())

    def withdraw(self, account_id: int, amount: int, request_id: str | None = None) -> Transfer:
        """Take `amount` minor units out; InsufficientFunds if the balance is lower."""
        return self._call("withdraw", account_id, amount, request_id or new_request_id())

    def transfer(
        self, from_account_id: int, to_account_id: int, amount: int, request_id: str | None = None
    ) -> Transfer:
        """Move `amount` between two open accounts in one transaction."""
        return self._call("transfer", from_account_id, to_account_id, amount, request_id or new_request_id())

    def list_transfers(self, account_id: int, limit: int = 100, cursor: str = "") -> ledger_thrift.TransferPage:
        """A page of the account's transfers, newest first."""
        return self._call("list_transfers", account_id, limit, cursor)

    def close_account(self, account_id: int, request_id: str | None = None) -> Account:
        """Close an account whose balance is zero."""
        return self._call("close_account", account_id, request_id or new_request_id())


def _as_dict(value: object) -> object:
    if isinstance(value, list):
        return [_as_dict(item) for item in value]
    if hasattr(value, "thrift_spec"):
        return {name: _as_dict(getattr(value, name)) for _, name, *_ in value.thrift_spec.values()}
    return value


def _time(milliseconds: int) -> str:
    return datetime.fromtimestamp(milliseconds / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _account_rows(accounts: list) -> str:
    status = ledger_thrift.AccountStatus._VALUES_TO_NAMES
    return _table(
        ["ID", "OWNER", "BALANCE", "STATUS", "CREATED (UTC)"],
        [[a.id, a.owner, a.balance, status[a.status], _time(a.created_at_ms)] for a in accounts],
    )


def _transfer_rows(transfers: list) -> str:
    return _table(
        ["ID", "FROM", "TO", "AMOUNT", "REQUEST ID", "CREATED (UTC)"],
        [[t.id, t.from_account_id, t.to_account_id, t.amount, t.request_id, _time(t.created_at_ms)] for t in transfers],
    )


def _human(value: object) -> str:
    if isinstance(value, Account):
        return _account_rows([value])
    if isinstance(value, Transfer):
        return _transfer_rows([value])
    if isinstance(value, ledger_thrift.AccountPage):
        return _account_rows(value.accounts) + (f"\nnext cursor: {value.next_cursor}" if value.next_cursor else "")
    if isinstance(value, ledger_thrift.TransferPage):
        return _transfer_rows(value.transfers) + (f"\nnext cursor: {value.next_cursor}" if value.next_cursor else "")
    if isinstance(value, ledger_thrift.Health):
        return f"serving: {value.serving}\ndatabase: {value.database}\nversion: {value.version}"
    return str(value)


def _parser(settings: settings_module.Settings) -> argparse.ArgumentParser:
    host = "127.0.0.1" if settings.thrift_host in ("0.0.0.0", "::") else settings.thrift_host
    parser = argparse.ArgumentParser(
        description="Call the Ledger service.",
        epilog="exit status: 0 ok, 1 internal error, 2 usage, 3 invalid argument, 4 not found, "
        "5 conflict, 6 insufficient funds, 7 unavailable (or health not ok), 8 server unreachable",
    )
    parser.add_argument("--host", default=host, help="server host (THRIFT_HOST; default %(default)s)")
    parser.add_argument("--port", type=int, default=settings.thrift_port, help="server port (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=settings.client_timeout, help="seconds (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, *arguments: tuple[str, type], write: bool = False, page: bool = False):
        sub = commands.add_parser(name, help=help)
        for argument, kind in arguments:
            sub.add_argument(argument, type=kind)
        if write:
            sub.add_argument("--request-id", help="repeat a write safely (default: a new id)")
        if page:
            sub.add_argument("--limit", type=int, default=100)
            sub.add_argument("--cursor", default="")

    command("ping", "check that the server answers")
    command("health", "server and database health")
    command("create-account", "open an account", ("owner", str), write=True)
    command("get-account", "show one account", ("account_id", int))
    command("list-accounts", "list accounts by id", page=True)
    command("deposit", "add money (minor units)", ("account_id", int), ("amount", int), write=True)
    command("withdraw", "take money out (minor units)", ("account_id", int), ("amount", int), write=True)
    command(
        "transfer",
        "move money between accounts",
        ("from_account_id", int),
        ("to_account_id", int),
        ("amount", int),
        write=True,
    )
    command("list-transfers", "an account's transfers, newest first", ("account_id", int), page=True)
    command("close-account", "close an account with a zero balance", ("account_id", int), write=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    options = vars(_parser(settings).parse_args(argv))
    host, port, timeout = options.pop("host"), options.pop("port"), options.pop("timeout")
    as_json = options.pop("json")
    method = options.pop("command").replace("-", "_")
    try:
        with LedgerClient(host, port, timeout) as client:
            result = getattr(client, method)(**options)
    except ServerUnreachable as error:
        print(f"error: cannot reach the Ledger server at {error}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except tuple(EXIT_STATUS) as error:
        print(f"error: {type(error).__name__}: {error.message}", file=sys.stderr)
        return EXIT_STATUS[type(error)]
    except TApplicationException as error:
        print(f"error: the server failed: {error}", file=sys.stderr)
        return EXIT_INTERNAL
    print(json.dumps(_as_dict(result), ensure_ascii=False) if as_json else _human(result))
    if method == "health" and not (result.serving and result.database):
        return EXIT_STATUS[ledger_thrift.Unavailable]  # lets a container healthcheck use this command
    return 0


if __name__ == "__main__":
    sys.exit(main())
