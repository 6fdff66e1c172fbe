"""Client of the Ledger service: a typed library other services import, and a command line.

`LedgerClient("host:port,host:port")` has one typed method per RPC on the kit's PooledClient (servicekit/client.py),
where every request starts. Command line: `python client.py --help`. Imports no MySQL code:
requirements-client.txt is enough to run it.
"""

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import thriftpy2

from servicekit.cli import CommandLine, table
from servicekit.client import PooledClient, new_request_id

ledger_thrift = thriftpy2.load(str(Path(__file__).with_name("service.thrift")), module_name="ledger_thrift")
Account = ledger_thrift.Account
Transfer = ledger_thrift.Transfer
AccountPage = ledger_thrift.AccountPage
TransferPage = ledger_thrift.TransferPage
EPOCH = datetime(1970, 1, 1)  # in UTC; naive, so that isoformat() adds no offset


class LedgerClient(PooledClient):
    """A thread-safe, pooled, retrying client of the Ledger service (options: see PooledClient)."""

    def __init__(self, servers: str, **options: Any) -> None:
        super().__init__(ledger_thrift.Ledger, servers, **options)

    def create_account(self, owner: str, request_id: str | None = None) -> Account:
        """Open an account with a zero balance."""
        return self.call("create_account", owner, _or_new(request_id))

    def get_account(self, account_id: int) -> Account:
        """One account; NotFound if there is none with that id."""
        return self.call("get_account", account_id)

    def list_accounts(self, limit: int = 100, cursor: str = "") -> AccountPage:
        """A page of accounts by id; pass next_cursor back for the next page."""
        return self.call("list_accounts", limit, cursor)

    def deposit(self, account_id: int, amount: int, request_id: str | None = None) -> Transfer:
        """Add `amount` minor units to an open account."""
        return self.call("deposit", account_id, amount, _or_new(request_id))

    def withdraw(self, account_id: int, amount: int, request_id: str | None = None) -> Transfer:
        """Take `amount` minor units out; InsufficientFunds if the balance is lower."""
        return self.call("withdraw", account_id, amount, _or_new(request_id))

    def transfer(
        self, from_account_id: int, to_account_id: int, amount: int, request_id: str | None = None
    ) -> Transfer:
        """Move `amount` between two open accounts in one transaction."""
        return self.call("transfer", from_account_id, to_account_id, amount, _or_new(request_id))

    def list_transfers(self, account_id: int, limit: int = 100, cursor: str = "") -> TransferPage:
        """A page of the account's transfers, newest first."""
        return self.call("list_transfers", account_id, limit, cursor)

    def close_account(self, account_id: int, request_id: str | None = None) -> Account:
        """Close an account whose balance is zero."""
        return self.call("close_account", account_id, _or_new(request_id))


def _or_new(request_id: str | None) -> str:
    return new_request_id() if request_id is None else request_id


def _time(milliseconds: int | None) -> str:
    """A time in UTC, or the raw milliseconds when they fall outside years 1..9999, or None when the server left
    the field out: one odd row, not a crash."""
    try:
        return (EPOCH + timedelta(milliseconds=milliseconds)).isoformat(" ", "seconds")
    except (OverflowError, TypeError):
        return str(milliseconds)


def _accounts(accounts: list) -> str:
    status = ledger_thrift.AccountStatus._VALUES_TO_NAMES
    return table(
        ["ID", "OWNER", "BALANCE", "STATUS", "CREATED (UTC)"],
        # A newer server may send a status this IDL does not name yet: shown as its number.
        [[a.id, a.owner, a.balance, status.get(a.status, a.status), _time(a.created_at_ms)] for a in accounts],
    )


def _transfers(transfers: list) -> str:
    return table(
        ["ID", "FROM", "TO", "AMOUNT", "REQUEST ID", "CREATED (UTC)"],
        [[t.id, t.from_account_id, t.to_account_id, t.amount, t.request_id, _time(t.created_at_ms)] for t in transfers],
    )


def show(result: object) -> str:
    """A result as a table for people."""
    if isinstance(result, Account):
        return _accounts([result])
    if isinstance(result, Transfer):
        return _transfers([result])
    # A list the server left out is None: no rows.
    rows = _accounts(result.accounts or []) if isinstance(result, AccountPage) else _transfers(result.transfers or [])
    return rows + (f"\nnext cursor: {result.next_cursor}" if result.next_cursor else "")


cli = CommandLine(
    LedgerClient,
    ledger_thrift.Ledger,
    Path(__file__).with_name("config.env"),
    {ledger_thrift.NotFound: 4, ledger_thrift.InsufficientFunds: 6},
    show,
)
# Each argument takes its type from service.thrift (by its name there): checked before anything is sent.
cli.command("create-account", "open an account", "owner", write=True)
cli.command("get-account", "show one account", "account_id")
cli.command("list-accounts", "list accounts by id", page=True)
cli.command("deposit", "add money (minor units)", "account_id", "amount", write=True)
cli.command("withdraw", "take money out (minor units)", "account_id", "amount", write=True)
cli.command("transfer", "move money between accounts", "from_account_id", "to_account_id", "amount", write=True)
cli.command("list-transfers", "an account's transfers, newest first", "account_id", page=True)
cli.command("close-account", "close an account with a zero balance", "account_id", write=True)

if __name__ == "__main__":
    sys.exit(cli.main())
