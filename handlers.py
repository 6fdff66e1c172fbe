"""Business rules of the Ledger service: one method per RPC in service.thrift.

The server's worker threads call these methods with decoded arguments; each
validates its input, then reads with `db.read()` or writes inside
`db.run_transaction()`. Raised Thrift exceptions travel to the client as the
errors declared in the IDL.
"""

import base64
import binascii
import functools
import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import MySQLdb
import thriftpy2

import db

ledger_thrift = thriftpy2.load(str(Path(__file__).with_name("service.thrift")), module_name="ledger_thrift")
Account = ledger_thrift.Account
Transfer = ledger_thrift.Transfer
AccountStatus = ledger_thrift.AccountStatus
InvalidArgument = ledger_thrift.InvalidArgument
NotFound = ledger_thrift.NotFound
Conflict = ledger_thrift.Conflict
InsufficientFunds = ledger_thrift.InsufficientFunds
Unavailable = ledger_thrift.Unavailable

VERSION = "1.0.0"
MAX_AMOUNT = 10**15
MAX_BALANCE = 2**63 - 1
MAX_OWNER_LENGTH = 200
MAX_PAGE_SIZE = 1000
OUTSIDE = 0  # the account id that stands for money entering or leaving the ledger
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
DUPLICATE_KEY = 1062


class _RequestAlreadyApplied(Exception):
    """Another call with this request_id committed first; replay its result."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _account(row: tuple) -> Account:
    return Account(*row)


def _transfer(row: tuple) -> Transfer:
    return Transfer(*row)


def _maps_database_outage(method: Callable) -> Callable:
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except db.DatabaseUnavailable as error:
            raise Unavailable(message=str(error)) from error

    return wrapper


def _check_amount(amount: int | None) -> None:
    if amount is None or not 1 <= amount <= MAX_AMOUNT:
        raise InvalidArgument(message=f"amount must be between 1 and {MAX_AMOUNT}", field="amount")


def _check_request_id(request_id: str | None) -> None:
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise InvalidArgument(
            message="request_id must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
            field="request_id",
        )


def _check_limit(limit: int | None) -> None:
    if limit is None or not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidArgument(message=f"limit must be between 1 and {MAX_PAGE_SIZE}", field="limit")


def _encode_cursor(*parts: object) -> str:
    return base64.urlsafe_b64encode(":".join(map(str, parts)).encode()).decode()


def _decode_cursor(cursor: str | None, kind: str, scope: int = 0) -> int | None:
    """The last id of the previous page, or None for the first page."""
    if not cursor:
        return None
    try:
        found_kind, found_scope, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if found_kind == kind and int(found_scope) == scope:
            return int(last_id)
    except (ValueError, binascii.Error, UnicodeError):
        pass
    raise InvalidArgument(message="cursor is not one this service returned", field="cursor")


def _fingerprint(method: str, *arguments: object) -> str:
    return hashlib.sha256(json.dumps([method, *arguments]).encode()).hexdigest()


def _previous_result(cursor, request_id: str, method: str, fingerprint: str) -> int | None:
    """The result id of an earlier identical request, None if there was none."""
    cursor.execute(
        "SELECT method, arguments_sha256, result_id FROM write_requests WHERE request_id = %s",
        (request_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    if (row[0], row[1]) != (method, fingerprint):
        raise Conflict(message=f"request_id {request_id!r} was already used for a different request")
    return row[2]


def _record_request(cursor, request_id: str, method: str, fingerprint: str, result_id: int) -> None:
    try:
        cursor.execute(
            "INSERT INTO write_requests (request_id, method, arguments_sha256, result_id, created_at_ms)"
            " VALUES (%s, %s, %s, %s, %s)",
            (request_id, method, fingerprint, result_id, _now_ms()),
        )
    except MySQLdb.IntegrityError as error:
        if db.error_code(error) == DUPLICATE_KEY:
            raise _RequestAlreadyApplied from error
        raise


def _idempotent_write(method: str, request_id: str, arguments: tuple, apply: Callable, load: Callable):
    """Apply a write once per request_id; a repeat returns load(original result id).

    `apply(cursor)` performs the write and returns the id of what it created or
    changed. If a concurrent call with the same request_id commits first, this
    transaction rolls back whole and the committed result is returned instead.
    """
    fingerprint = _fingerprint(method, *arguments)

    def work(cursor):
        previous_id = _previous_result(cursor, request_id, method, fingerprint)
        if previous_id is not None:
            return load(cursor, previous_id)
        result_id = apply(cursor)
        _record_request(cursor, request_id, method, fingerprint, result_id)
        return load(cursor, result_id)

    try:
        return db.run_transaction(work)
    except _RequestAlreadyApplied:
        return db.run_transaction(work)


def _load_account(cursor, account_id: int) -> Account:
    cursor.execute(
        "SELECT id, owner, balance, status, created_at_ms, updated_at_ms FROM accounts WHERE id = %s", (account_id,)
    )
    return _account(cursor.fetchone())


def _load_transfer(cursor, transfer_id: int) -> Transfer:
    cursor.execute(
        "SELECT id, from_account_id, to_account_id, amount, request_id, created_at_ms FROM transfers WHERE id = %s",
        (transfer_id,),
    )
    return _transfer(cursor.fetchone())


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
    _check_request_id(request_id)
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

    return _idempotent_write(method, request_id, (from_id, to_id, amount), apply, _load_transfer)


class LedgerHandler:
    """Implements the Ledger service; one instance serves every worker thread."""

    def __init__(self, is_serving: Callable[[], bool]) -> None:
        self._is_serving = is_serving

    def ping(self) -> str:
        return "pong"

    def health(self) -> ledger_thrift.Health:
        return ledger_thrift.Health(serving=self._is_serving(), database=db.database_answers(), version=VERSION)

    @_maps_database_outage
    def create_account(self, owner: str, request_id: str) -> Account:
        owner = owner.strip() if isinstance(owner, str) else ""
        if not 1 <= len(owner) <= MAX_OWNER_LENGTH:
            raise InvalidArgument(
                message=f"owner must be 1 to {MAX_OWNER_LENGTH} characters after trimming", field="owner"
            )
        _check_request_id(request_id)

        def apply(cursor) -> int:
            now = _now_ms()
            cursor.execute(
                "INSERT INTO accounts (owner, balance, status, created_at_ms, updated_at_ms)"
                " VALUES (%s, 0, %s, %s, %s)",
                (owner, AccountStatus.OPEN, now, now),
            )
            return cursor.lastrowid

        return _idempotent_write("create_account", request_id, (owner,), apply, _load_account)

    @_maps_database_outage
    def get_account(self, account_id: int) -> Account:
        rows = db.read(
            "SELECT id, owner, balance, status, created_at_ms, updated_at_ms FROM accounts WHERE id = %s", (account_id,)
        )
        if not rows:
            raise NotFound(message=f"account {account_id} does not exist")
        return _account(rows[0])

    @_maps_database_outage
    def list_accounts(self, limit: int, cursor: str) -> ledger_thrift.AccountPage:
        _check_limit(limit)
        after_id = _decode_cursor(cursor, "accounts") or 0
        rows = db.read(
            "SELECT id, owner, balance, status, created_at_ms, updated_at_ms"
            " FROM accounts WHERE id > %s ORDER BY id LIMIT %s",
            (after_id, limit + 1),
        )
        page = rows[:limit]
        next_cursor = _encode_cursor("accounts", 0, page[-1][0]) if len(rows) > limit else ""
        return ledger_thrift.AccountPage(accounts=[_account(r) for r in page], next_cursor=next_cursor)

    @_maps_database_outage
    def deposit(self, account_id: int, amount: int, request_id: str) -> Transfer:
        return _move_money(OUTSIDE, account_id, amount, request_id, "deposit")

    @_maps_database_outage
    def withdraw(self, account_id: int, amount: int, request_id: str) -> Transfer:
        return _move_money(account_id, OUTSIDE, amount, request_id, "withdraw")

    @_maps_database_outage
    def transfer(self, from_account_id: int, to_account_id: int, amount: int, request_id: str) -> Transfer:
        if OUTSIDE in (from_account_id, to_account_id):
            raise NotFound(message="account 0 does not exist")
        return _move_money(from_account_id, to_account_id, amount, request_id, "transfer")

    @_maps_database_outage
    def list_transfers(self, account_id: int, limit: int, cursor: str) -> ledger_thrift.TransferPage:
        _check_limit(limit)
        before_id = _decode_cursor(cursor, "transfers", account_id) or MAX_BALANCE
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
        next_cursor = _encode_cursor("transfers", account_id, page[-1][0]) if len(rows) > limit else ""
        return ledger_thrift.TransferPage(transfers=[_transfer(r) for r in page], next_cursor=next_cursor)

    @_maps_database_outage
    def close_account(self, account_id: int, request_id: str) -> Account:
        _check_request_id(request_id)

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

        return _idempotent_write("close_account", request_id, (account_id,), apply, _load_account)
