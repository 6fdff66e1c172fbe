"""Business rules of the Ledger service: one method per RPC in service.thrift.

The server's worker threads call these methods with decoded arguments; each validates its input, then reads with
`db.read()` or writes through `writes.apply()` (once per request_id, inside `db.run_transaction()`). Raised Thrift
exceptions reach the client as the errors the IDL declares; a database outage becomes `Unavailable`.
"""

import time
import unicodedata
from pathlib import Path

import thriftpy2

import db
from servicekit.idempotency import IdempotentWrites
from servicekit.paging import decode_cursor, encode_cursor

ledger_thrift = thriftpy2.load(str(Path(__file__).with_name("service.thrift")), module_name="ledger_thrift")
Account = ledger_thrift.Account
Transfer = ledger_thrift.Transfer
AccountStatus = ledger_thrift.AccountStatus
NotFound = ledger_thrift.NotFound
InsufficientFunds = ledger_thrift.InsufficientFunds
InvalidArgument = ledger_thrift.base.InvalidArgument
Conflict = ledger_thrift.base.Conflict

VERSION = "1.1.0"
MAX_AMOUNT = 10**15
MAX_BALANCE = MAX_ID = 2**63 - 1  # a signed BIGINT column's largest value
MAX_OWNER_LENGTH = 200
MAX_PAGE_SIZE = 1000
LINE_BREAKING = {"Cc", "Zl", "Zp"}  # control characters, line and paragraph separators
# Direction overrides, embeddings, isolates and marks: one could make a table row read backwards.
BIDI_CONTROLS = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
OUTSIDE = 0  # the account id that stands for money entering or leaving the ledger

writes = IdempotentWrites(db.run_transaction)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_owner(owner: str | None) -> str:
    owner = owner.strip() if isinstance(owner, str) else ""
    if not 1 <= len(owner) <= MAX_OWNER_LENGTH:
        raise InvalidArgument(message=f"owner must be 1 to {MAX_OWNER_LENGTH} characters after trimming", field="owner")
    # Tabs, newlines and NUL would break the CLI's tables and any log line that shows an owner.
    if any(c in BIDI_CONTROLS or unicodedata.category(c) in LINE_BREAKING for c in owner):
        raise InvalidArgument(message="owner must not contain control characters", field="owner")
    return owner


def _check_amount(amount: int | None) -> None:
    if amount is None or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidArgument(message=f"amount must be between 1 and {MAX_AMOUNT}", field="amount")


def _check_limit(limit: int | None) -> None:
    if limit is None or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgument(message=f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")


def _load_account(cursor, account_id: int) -> Account:
    cursor.execute(
        "SELECT id, owner, balance, status, created_at_ms, updated_at_ms FROM accounts WHERE id = %s", (account_id,)
    )
    return Account(*cursor.fetchone())


def _load_transfer(cursor, transfer_id: int) -> Transfer:
    cursor.execute(
        "SELECT id, from_account_id, to_account_id, amount, request_id, created_at_ms FROM transfers WHERE id = %s",
        (transfer_id,),
    )
    return Transfer(*cursor.fetchone())


def _lock_accounts(cursor, account_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Lock the rows in ascending id order (so two transfers cannot deadlock).

    Returns {id: (balance, status)} and raises NotFound for a missing id.
    """
    locked = {}
    for account_id in sorted(account_ids):
        cursor.execute("SELECT balance, status FROM accounts WHERE id = %s FOR UPDATE", (account_id,))
        row = cursor.fetchone()
        if row is None:
            raise NotFound(message=f"account {account_id} does not exist")
        locked[account_id] = row
    return locked


def _move_money(from_id: int, to_id: int, amount: int, request_id: str, method: str) -> Transfer:
    """Record one ledger entry and update both balances in one transaction."""
    _check_amount(amount)
    if from_id == to_id:
        raise InvalidArgument(message="cannot transfer to the same account", field="to_account_id")

    def apply(cursor) -> int:
        accounts = _lock_accounts(cursor, [i for i in (from_id, to_id) if i != OUTSIDE])
        for account_id, (_, status) in accounts.items():
            if status != AccountStatus.OPEN:
                raise Conflict(message=f"account {account_id} is closed")
        if from_id != OUTSIDE and accounts[from_id][0] < amount:
            available = accounts[from_id][0]
            raise InsufficientFunds(message=f"account {from_id} has only {available}", available=available)
        if to_id != OUTSIDE and accounts[to_id][0] > MAX_BALANCE - amount:
            raise InvalidArgument(message=f"account {to_id} cannot hold that much", field="amount")
        now = _now_ms()
        for account_id, delta in ((from_id, -amount), (to_id, amount)):
            if account_id != OUTSIDE:
                cursor.execute(
                    "UPDATE accounts SET balance = balance + %s, updated_at_ms = %s WHERE id = %s",
                    (delta, now, account_id),
                )
        cursor.execute(
            "INSERT INTO transfers (from_account_id, to_account_id, amount, request_id, created_at_ms)"
            " VALUES (%s, %s, %s, %s, %s)",
            (from_id, to_id, amount, request_id, now),
        )
        return cursor.lastrowid

    return writes.apply(method, request_id, (from_id, to_id, amount), apply, _load_transfer)


def _check_account_ids(*account_ids: int | None) -> None:
    """Account 0 is where deposits come from and withdrawals go: no client names it.

    A stock Thrift client leaves out an argument that is None: no id, no account.
    """
    if None in account_ids:
        raise NotFound(message="no account id was given")
    if OUTSIDE in account_ids:
        raise NotFound(message=f"account {OUTSIDE} does not exist")


class LedgerHandler:
    """Implements the Ledger service; one instance serves every worker thread.

    ping and health are the kit's (servicekit/base.thrift).
    """

    def create_account(self, owner: str, request_id: str) -> Account:
        owner = _check_owner(owner)

        def apply(cursor) -> int:
            now = _now_ms()
            cursor.execute(
                "INSERT INTO accounts (owner, balance, status, created_at_ms, updated_at_ms)"
                " VALUES (%s, 0, %s, %s, %s)",
                (owner, AccountStatus.OPEN, now, now),
            )
            return cursor.lastrowid

        return writes.apply("create_account", request_id, (owner,), apply, _load_account)

    def get_account(self, account_id: int) -> Account:
        _check_account_ids(account_id)
        rows = db.read(
            "SELECT id, owner, balance, status, created_at_ms, updated_at_ms FROM accounts WHERE id = %s", (account_id,)
        )
        if not rows:
            raise NotFound(message=f"account {account_id} does not exist")
        return Account(*rows[0])

    def list_accounts(self, limit: int, cursor: str) -> ledger_thrift.AccountPage:
        _check_limit(limit)
        after_id = decode_cursor(cursor, "accounts") or 0
        rows = db.read(
            "SELECT id, owner, balance, status, created_at_ms, updated_at_ms"
            " FROM accounts WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit + 1),
        )
        page = rows[:limit]
        next_cursor = encode_cursor("accounts", page[-1][0]) if len(rows) > limit else ""
        return ledger_thrift.AccountPage(accounts=[Account(*row) for row in page], next_cursor=next_cursor)

    def deposit(self, account_id: int, amount: int, request_id: str) -> Transfer:
        _check_account_ids(account_id)
        return _move_money(OUTSIDE, account_id, amount, request_id, "deposit")

    def withdraw(self, account_id: int, amount: int, request_id: str) -> Transfer:
        _check_account_ids(account_id)
        return _move_money(account_id, OUTSIDE, amount, request_id, "withdraw")

    def transfer(self, from_account_id: int, to_account_id: int, amount: int, request_id: str) -> Transfer:
        _check_account_ids(from_account_id, to_account_id)
        return _move_money(from_account_id, to_account_id, amount, request_id, "transfer")

    def list_transfers(self, account_id: int, limit: int, cursor: str) -> ledger_thrift.TransferPage:
        _check_limit(limit)
        _check_account_ids(account_id)
        before_id = decode_cursor(cursor, "transfers", account_id) or MAX_ID  # the first page: the newest
        if not db.read("SELECT 1 FROM accounts WHERE id = %s", (account_id,)):
            raise NotFound(message=f"account {account_id} does not exist")
        # One index range per direction, merged: keyset pagination that stays
        # fast however deep the page is.
        rows = db.read(
            "SELECT id, from_account_id, to_account_id, amount, request_id, created_at_ms FROM ("
            " (SELECT id, from_account_id, to_account_id, amount, request_id, created_at_ms"
            "  FROM transfers WHERE from_account_id = %s AND id < %s"
            "  ORDER BY id DESC LIMIT %s)"
            " UNION ALL"
            " (SELECT id, from_account_id, to_account_id, amount, request_id, created_at_ms"
            "  FROM transfers WHERE to_account_id = %s AND id < %s"
            "  ORDER BY id DESC LIMIT %s)"
            ") AS entries ORDER BY id DESC LIMIT %s",
            (account_id, before_id, limit + 1, account_id, before_id, limit + 1, limit + 1),
        )
        page = rows[:limit]
        next_cursor = encode_cursor("transfers", page[-1][0], account_id) if len(rows) > limit else ""
        return ledger_thrift.TransferPage(transfers=[Transfer(*row) for row in page], next_cursor=next_cursor)

    def close_account(self, account_id: int, request_id: str) -> Account:
        _check_account_ids(account_id)

        def apply(cursor) -> int:
            balance, status = _lock_accounts(cursor, [account_id])[account_id]
            if status != AccountStatus.OPEN:
                raise Conflict(message=f"account {account_id} is already closed")
            if balance != 0:
                raise Conflict(message=f"account {account_id} still holds {balance}; withdraw it first")
            cursor.execute(
                "UPDATE accounts SET status = %s, updated_at_ms = %s WHERE id = %s",
                (AccountStatus.CLOSED, _now_ms(), account_id),
            )
            return account_id

        return writes.apply("close_account", request_id, (account_id,), apply, _load_account)
