"""Client for the Ledger service: a library other services import, and a command line.

Library: `LedgerClient("host:port,host:port")` has one typed method per RPC.
It keeps a bounded pool of framed binary-protocol connections, safe to share
between threads; retries connection failures, timeouts and `Unavailable`
with the same request_id; and spreads calls over several servers, skipping
one that is down. Command line: `python client.py --help`.
"""

import argparse
import itertools
import json
import random
import socket
import ssl
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import thriftpy2
from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TClient, TException
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
# How long a server that refused a connection is skipped (doubling per failure, capped).
DOWN_FOR_SECONDS, DOWN_AT_MOST_SECONDS = 1.0, 30.0


class ServerUnreachable(Exception):
    """No server could be reached, or none replied within the timeout."""


def new_request_id() -> str:
    """A fresh request id; reuse it to retry the same write safely."""
    return uuid.uuid4().hex


def parse_servers(servers: str) -> list[tuple[str, int]]:
    """'host:port,host:port' -> [(host, port), ...]; raises ValueError if malformed."""
    addresses = []
    for item in servers.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"not host:port: {item.strip()!r}")
        addresses.append((host, int(port)))
    return addresses


def tls_context(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Client TLS settings: verify the server's chain against `ca_file` and its
    host name (thriftpy2's own TSSLSocket turns hostname checking off), and
    present a client certificate if one is given."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


class _Connection:
    """One open connection to one server, used by one call at a time."""

    def __init__(
        self, address: tuple[str, int], connect_timeout: float, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        self.address = address
        sock = socket.create_connection(address, timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = tls.wrap_socket(sock, server_hostname=address[0])
        except BaseException:
            sock.close()
            raise
        sock.settimeout(timeout)
        self.socket = TSocket(sock=sock)
        self.thrift = TClient(ledger_thrift.Ledger, TCyBinaryProtocol(TCyFramedTransport(self.socket)))
        self.idle_since = time.monotonic()

    def closed_by_server(self) -> bool:
        """An idle connection that is readable was closed by the server (idle
        timeout, restart) or holds bytes nobody asked for: unusable either way."""
        sock = self.socket.sock
        timeout = sock.gettimeout()
        # A non-blocking read (select() fails on descriptors >= 1024, and TLS
        # sockets cannot peek); if it returns anything the connection is discarded.
        sock.settimeout(0)
        try:
            sock.recv(1)
            return True  # end of file, or stray bytes
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(timeout)

    def close(self) -> None:
        self.thrift.close()


class LedgerClient:
    """A thread-safe, pooled, retrying client of the Ledger service.

    servers: "host:port" or "host:port,host:port,..."; calls are spread over
        them, and one that refuses connections is skipped for a while.
    pool_size: most connections open at once; a call waits up to
        `acquire_timeout` seconds for a free one.
    timeout / connect_timeout: seconds per call / per connection attempt.
    max_idle: seconds an unused connection is kept before it is replaced.
    retries / deadline: connection failures, timeouts and `Unavailable` are
        retried (backoff with jitter) up to `retries` times within `deadline`
        seconds of the first attempt, with the same request_id, so a write is
        applied once. Service errors are raised at once.
    tls: an ssl.SSLContext (see tls_context()) to call a TLS server.

    Any transport error or timeout discards that connection: the reply of a
    timed-out call may still arrive and must never be read by the next call.
    """

    def __init__(
        self,
        servers: str,
        *,
        pool_size: int = 8,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        acquire_timeout: float = 10.0,
        max_idle: float = 300.0,
        retries: int = 3,
        deadline: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.servers = parse_servers(servers)
        self.tls = tls
        self.pool_size = pool_size
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.max_idle = max_idle
        self.retries = retries
        self.deadline = deadline
        self._idle: list[_Connection] = []
        self._open = 0
        self._closed = False
        self._available = threading.Condition()
        self._next_server = itertools.cycle(range(len(self.servers)))
        self._down_until: dict[tuple[str, int], float] = {}
        self._down_for: dict[tuple[str, int], float] = {}

    def __enter__(self) -> "LedgerClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection now and each busy one when its call ends."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._available.notify_all()
        for connection in idle:
            connection.close()

    def _acquire(self) -> _Connection:
        give_up_at = time.monotonic() + self.acquire_timeout
        with self._available:
            while True:
                if self._closed:
                    raise ServerUnreachable("the client is closed")
                if self._idle:
                    connection = self._idle.pop()  # most recently used: least likely to be stale
                    if time.monotonic() - connection.idle_since < self.max_idle and not connection.closed_by_server():
                        return connection
                    self._open -= 1
                    connection.close()
                    continue
                if self._open < self.pool_size:
                    self._open += 1
                    break
                if not self._available.wait(give_up_at - time.monotonic()):
                    raise ServerUnreachable(f"all {self.pool_size} connections stayed busy")
        try:
            return self._connect()
        except BaseException:
            self._release(None)
            raise

    def _release(self, connection: _Connection | None) -> None:
        """Return a healthy connection to the pool; None gives up a slot."""
        with self._available:
            if connection is not None and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                self._open -= 1
                if connection is not None:
                    connection.close()
            self._available.notify()

    def _connect(self) -> _Connection:
        """Open a connection to the next server that is up, trying each once."""
        with self._available:
            now = time.monotonic()
            start = next(self._next_server)
            order = self.servers[start:] + self.servers[:start]
            # Servers that are up first; if all are down, try them anyway,
            # soonest-to-recover first, rather than fail without trying.
            order.sort(key=lambda address: max(self._down_until.get(address, 0.0), now))
        errors = []
        for address in order:
            try:
                connection = _Connection(address, self.connect_timeout, self.timeout, self.tls)
            except (TTransportException, OSError) as error:
                with self._available:
                    down_for = min(self._down_for.get(address, DOWN_FOR_SECONDS / 2) * 2, DOWN_AT_MOST_SECONDS)
                    self._down_for[address] = down_for
                    self._down_until[address] = time.monotonic() + down_for
                errors.append(f"{address[0]}:{address[1]} ({_reason(error)})")
                continue
            with self._available:
                self._down_for.pop(address, None)
                self._down_until.pop(address, None)
            return connection
        raise ServerUnreachable(", ".join(errors))

    def _call(self, method: str, *args: object):
        give_up_at = time.monotonic() + self.deadline
        for attempt in itertools.count():
            try:
                return self._call_once(method, args)
            except (ServerUnreachable, ledger_thrift.Unavailable):
                pause = min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                if attempt >= self.retries or time.monotonic() + pause > give_up_at:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _call_once(self, method: str, args: tuple):
        connection = self._acquire()
        try:
            result = getattr(connection.thrift, method)(*args)
        except (TTransportException, OSError) as error:
            self._release(None)
            connection.close()
            address = f"{connection.address[0]}:{connection.address[1]}"
            raise ServerUnreachable(f"{address} ({_reason(error)})") from None
        except TException:
            self._release(connection)  # a whole error reply was read: still in step
            raise
        except BaseException:
            self._release(None)  # interrupted mid-call: the reply may still come
            connection.close()
            raise
        self._release(connection)
        return result

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


def _reason(error: BaseException) -> str:
    return getattr(error, "message", None) or str(error) or type(error).__name__


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
    parser.add_argument(
        "--servers",
        default=f"{host}:{settings.thrift_port}",
        help="host:port[,host:port...] (default from THRIFT_HOST and THRIFT_PORT: %(default)s)",
    )
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
            sub.add_argument("--all", action="store_true", help="follow next_cursor to the last page")

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


def _every_page(call, options: dict):
    """Follow next_cursor to the last page; return one page holding every item."""
    page = call(**options)
    items_field = "accounts" if isinstance(page, ledger_thrift.AccountPage) else "transfers"
    items = getattr(page, items_field)
    while page.next_cursor:
        page = call(**{**options, "cursor": page.next_cursor})
        items += getattr(page, items_field)
    setattr(page, items_field, items)
    page.next_cursor = ""
    return page


def main(argv: list[str] | None = None) -> int:
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    parser = _parser(settings)
    options = vars(parser.parse_args(argv))
    servers, timeout, as_json = options.pop("servers"), options.pop("timeout"), options.pop("json")
    method = options.pop("command").replace("-", "_")
    follow = options.pop("all", False)
    try:
        tls = None
        if settings.client_tls_ca:
            tls = tls_context(settings.client_tls_ca, settings.client_tls_cert, settings.client_tls_key)
        client = LedgerClient(servers, pool_size=1, timeout=timeout, connect_timeout=min(timeout, 2.0), tls=tls)
    except ValueError as error:
        parser.error(f"--servers: {error}")
    except OSError as error:  # ssl.SSLError and a missing file are OSErrors
        print(f"error: cannot load the TLS files (CLIENT_TLS_*): {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            call = getattr(client, method)
            result = _every_page(call, options) if follow else call(**options)
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
