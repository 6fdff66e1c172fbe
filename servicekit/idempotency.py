"""Idempotent writes: a request_id applies its write once; a repeat returns what it wrote, as it is now.

Handlers wrap every write RPC in `IdempotentWrites.apply()`, inside db.py's transaction, so a client may retry
any write whose reply it did not receive.
"""

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

import MySQLdb

from servicekit.errors import REQUEST_ID, REQUEST_ID_FORM, BadRequestId, DuplicateKey, RequestIdReused
from servicekit.mysql import DUPLICATE_KEY, error_code

REQUEST_ID_ARGUMENT = "request_id"
METHOD_NAME_MAX = 255  # write_requests.method
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1  # write_requests.result_id
T = TypeVar("T")


class _AppliedMeanwhile(Exception):
    """Another call with this request_id committed first; replay its result."""


def check_request_id(request_id: object) -> None:
    """Raise BadRequestId unless `request_id` has the accepted form."""
    if not isinstance(request_id, str) or not REQUEST_ID.fullmatch(request_id):
        raise BadRequestId(f"request_id must be {REQUEST_ID_FORM}")


def _plain(value: object) -> object:
    """What JSON cannot hold of a write's arguments, for its fingerprint: a struct as its fields, a set in an
    order that does not depend on the process (a set of strings iterates in a different one in each)."""
    if hasattr(value, "thrift_spec"):
        return {name: getattr(value, name) for _, name, *_ in value.thrift_spec.values()}
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"a write's argument of type {type(value).__name__} has no fingerprint")


class IdempotentWrites:
    """Applies writes once per request_id, inside `run_transaction(work)` (db.py's).

    Every write RPC takes a client-chosen `request_id` (the kit treats a
    method with an argument of that name as a write). Handlers wrap the write:

        writes = IdempotentWrites(db.run_transaction)
        return writes.apply("add_item", request_id, (name, quantity), apply, load)

    The record lives in `write_requests` (the kit's migration 001), in the
    same transaction as the write itself: both commit, or neither does.
    """

    def __init__(self, run_transaction: Callable[[Callable[[Any], T]], T]) -> None:
        self._run_transaction = run_transaction

    def apply(
        self,
        method: str,
        request_id: str,
        arguments: tuple,
        apply: Callable[[Any], int],
        load: Callable[[Any, int], T],
    ) -> T:
        """Run `apply(cursor)` once per request_id and return `load(cursor, its result id)`.

        `apply` performs the write and returns the integer id of what it
        created or changed (a table keyed by text needs an id column too). A
        repeat with the same method and arguments returns `load(cursor, that
        id)` without writing (so the row as it is now, not as the first call
        returned it: a service whose rows change and whose clients need the
        first reply stores that reply); with others it raises
        RequestIdReused. The request_id is claimed before `apply` runs, so a
        concurrent call with the same one (a retry while the first call still
        runs) waits for it, then returns its result: it never applies against
        what the first call left (InsufficientFunds for the money the first
        moved, say). If the first rolls back, the waiting one applies. A write
        that duplicates a unique key runs twice before its Conflict.
        """
        check_request_id(request_id)
        fingerprint = hashlib.sha256(json.dumps([method, *arguments], default=_plain).encode()).hexdigest()

        def work(cursor) -> T:
            previous_id = _previous_result(cursor, request_id, method, fingerprint)
            if previous_id is not None:
                return load(cursor, previous_id)
            _claim(cursor, request_id, method, fingerprint)
            result_id = apply(cursor)
            if not isinstance(result_id, int) or isinstance(result_id, bool):
                # write_requests.result_id is a BIGINT: a key of another type (a SKU, say) needs an id column.
                raise TypeError(f"{method}: apply() must return the integer id of the row it wrote, not {result_id!r}")
            if not BIGINT_MIN <= result_id <= BIGINT_MAX:  # a BIGINT UNSIGNED key past 2**63 - 1, say
                raise ValueError(f"{method}: apply() returned {result_id}, outside write_requests.result_id's BIGINT")
            cursor.execute("UPDATE write_requests SET result_id = %s WHERE request_id = %s", (result_id, request_id))
            return load(cursor, result_id)

        try:
            return self._run_transaction(work)
        except (_AppliedMeanwhile, DuplicateKey):
            # A concurrent call with this request_id committed first (its claim, unique, came before ours): the
            # second run returns its result. A duplicate from another request raises again: Conflict.
            return self._run_transaction(work)


def _previous_result(cursor, request_id: str, method: str, fingerprint: str) -> int | None:
    cursor.execute(
        "SELECT method, arguments_sha256, result_id FROM write_requests WHERE request_id = %s",
        (request_id,),
    )
    row = cursor.fetchone()
    if row is None:
        return None
    if (row[0], row[1]) != (method, fingerprint):
        raise RequestIdReused(f"request_id {request_id!r} was already used for a different request")
    return row[2]


def _claim(cursor, request_id: str, method: str, fingerprint: str) -> None:
    """Record the request_id before the write, its result id to follow (0 until then, in this transaction only).

    Its row lock makes a concurrent call with the same request_id wait here until this transaction ends.
    """
    try:
        cursor.execute(
            "INSERT INTO write_requests (request_id, method, arguments_sha256, result_id, created_at_ms)"
            " VALUES (%s, %s, %s, 0, %s)",
            (request_id, method, fingerprint, int(time.time() * 1000)),
        )
    except MySQLdb.IntegrityError as error:
        if error_code(error) == DUPLICATE_KEY:
            raise _AppliedMeanwhile from error
        raise
