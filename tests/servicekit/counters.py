"""The kit's test service: handlers, typed client and server of Counters (counters.thrift).

Built exactly as a service copied from this template is (IDL extending
base.thrift, handlers on db.py, migrations of its own, server.py's steps),
so the kit's tests prove what a new service gets. `python counters.py`
serves it with the settings of config.env and the environment.
"""

import sys
from pathlib import Path

import thriftpy2

import db
from servicekit import startup
from servicekit.client import PooledClient, new_request_id
from servicekit.idempotency import IdempotentWrites
from servicekit.paging import decode_cursor, encode_cursor

HERE = Path(__file__).resolve().parent
counters_thrift = thriftpy2.load(str(HERE / "counters.thrift"), module_name="counters_thrift")
InvalidArgument = counters_thrift.base.InvalidArgument
writes = IdempotentWrites(db.run_transaction)


def _load_addition(cursor, addition_id: int):
    cursor.execute("SELECT id, name, amount, total, request_id FROM additions WHERE id = %s", (addition_id,))
    return counters_thrift.Addition(*cursor.fetchone())


def _load_counter(cursor, counter_id: int):
    cursor.execute("SELECT id, name, total FROM counters WHERE id = %s", (counter_id,))
    return counters_thrift.Counter(*cursor.fetchone())


class CountersHandler:
    def add(self, name: str, amount: int, request_id: str):
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise InvalidArgument(message="name must be 1 to 64 characters", field="name")
        if amount is None or not 1 <= amount <= 10**9:
            raise InvalidArgument(message="amount must be between 1 and 10^9", field="amount")

        def apply(cursor) -> int:
            cursor.execute(
                "INSERT INTO counters (name, total) VALUES (%s, %s) ON DUPLICATE KEY UPDATE total = total + %s",
                (name, amount, amount),
            )
            cursor.execute("SELECT total FROM counters WHERE name = %s", (name,))
            cursor.execute(
                "INSERT INTO additions (name, amount, total, request_id) VALUES (%s, %s, %s, %s)",
                (name, amount, cursor.fetchone()[0], request_id),
            )
            return cursor.lastrowid

        return writes.apply("add", request_id, (name, amount), apply, _load_addition)

    def create(self, name: str, request_id: str):
        if not isinstance(name, str) or not 1 <= len(name) <= 64:
            raise InvalidArgument(message="name must be 1 to 64 characters", field="name")

        def apply(cursor) -> int:
            cursor.execute("INSERT INTO counters (name) VALUES (%s)", (name,))  # no upsert: a name is taken once
            return cursor.lastrowid

        return writes.apply("create", request_id, (name,), apply, _load_counter)

    def get(self, name: str):
        rows = db.read("SELECT id, name, total FROM counters WHERE name = %s", (name,))
        if not rows:
            raise counters_thrift.NotFound(message=f"no counter named {name!r}")
        return counters_thrift.Counter(*rows[0])

    def list_counters(self, limit: int, cursor: str):
        if limit is None or not 1 <= limit <= 1000:
            raise InvalidArgument(message="limit must be between 1 and 1000", field="limit")
        after = decode_cursor(cursor, "counters") or 0
        rows = db.read("SELECT id, name, total FROM counters WHERE id > %s ORDER BY id LIMIT %s", (after, limit + 1))
        next_cursor = encode_cursor("counters", rows[limit - 1][0]) if len(rows) > limit else ""
        return counters_thrift.CounterPage([counters_thrift.Counter(*row) for row in rows[:limit]], next_cursor)

    def repeat(self, text: str, times: int) -> str:
        if times is None or not 0 <= times <= 100_000:
            raise InvalidArgument(message="times must be between 0 and 100000", field="times")
        return (text or "") * times

    def hold(self, seconds: float) -> None:
        db.read("SELECT SLEEP(%s)", (seconds,))

    def fail(self) -> None:
        raise RuntimeError("a bug")

    def undeclared(self) -> None:
        raise counters_thrift.NotFound(message="not declared by undeclared()")


class CountersClient(PooledClient):
    def __init__(self, servers: str, **options) -> None:
        super().__init__(counters_thrift.Counters, servers, **options)

    def add(self, name: str, amount: int, request_id: str | None = None):
        return self.call("add", name, amount, new_request_id() if request_id is None else request_id)

    def create(self, name: str, request_id: str | None = None):
        return self.call("create", name, new_request_id() if request_id is None else request_id)

    def get(self, name: str):
        return self.call("get", name)

    def list_counters(self, limit: int = 100, cursor: str = ""):
        return self.call("list_counters", limit, cursor)


def serve() -> None:
    db.MIGRATIONS_DIR = HERE / "migrations"  # this service's schema, not the Ledger's
    settings = startup.load_settings(db.CONFIG_FILE)
    metrics = startup.observe(settings)
    server = startup.build_server(counters_thrift.Counters, CountersHandler(), db, settings, "0.1.0", metrics)
    startup.migrate(db, settings)
    startup.serve(server, db, settings, "0.1.0", metrics)


if __name__ == "__main__":
    sys.exit(startup.run(serve, sys.argv[1:]))
