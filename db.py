"""The MySQL layer: one module-level DBUtils pool, transactions, migrations.

Handlers call `read()` for autocommit queries and `run_transaction()` for
every write. Database outages surface as `DatabaseUnavailable`, which the
handlers turn into the `Unavailable` error clients may retry.

Why PersistentDB by default: the server runs a fixed set of worker threads,
so one steady connection per worker is exactly enough; there is no pool lock
to contend and a worker never waits for a connection. `DB_POOL=pooled`
switches to PooledDB (a shared, bounded pool of `DB_POOL_SIZE`), which suits
thread counts that change.
"""

import logging
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import MySQLdb
from dbutils.persistent_db import PersistentDB
from dbutils.pooled_db import PooledDB

import settings as settings_module
from settings import Settings

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Errors that mean the connection itself is gone: only these may make DBUtils
# replace the connection (and, outside a transaction, repeat the statement).
LOST_CONNECTION = {2006, 2013, 2055}
# Errors that mean "the database cannot serve this now": the client may retry.
UNAVAILABLE = LOST_CONNECTION | {1040, 1053, 1927, 2002, 2003, 2005, 2026, 4031}
# Errors the transaction itself caused; running it again usually succeeds.
RETRYABLE = {1205, 1213}  # lock wait timeout, deadlock
PING_INTERVAL_SECONDS = 1.0

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Hooks:
    """Callbacks for metrics (server.py passes observability's); the defaults do nothing."""

    connection_opened: Callable[[], None] = lambda: None
    error: Callable[[int | None], None] = lambda code: None
    transaction_retried: Callable[[], None] = lambda: None


_pool: PersistentDB | PooledDB | None = None
_deadlock_retries = 0
_hooks = Hooks()
_connect_arguments: dict = {}
# The MySQL connections the pool holds: each joins at its first checkout and
# leaves when DBUtils drops it (closed, replaced, or its thread ended).
_pooled_connections: weakref.WeakSet = weakref.WeakSet()
HEALTH_CHECK_TIMEOUT_SECONDS = 2


class DatabaseUnavailable(Exception):
    """The database could not be reached or did not answer in time."""


def error_code(error: BaseException) -> int | None:
    """The MySQL error number of a driver exception, if it carries one."""
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _is_lost_connection(error: BaseException) -> bool:
    return error_code(error) in LOST_CONNECTION


def _ping(connection: MySQLdb.Connection) -> None:
    """DBUtils' liveness check at checkout; raising means "reconnect".

    DBUtils' own check calls ping(False), which mysqlclient 2.3 deprecates:
    under `-W error` that warning made every checkout reconnect silently. And
    a round trip per checkout doubles the database work of a read, so a
    connection is checked at most once per PING_INTERVAL_SECONDS. One lost in
    between fails its statement: DBUtils reconnects and repeats a read, and a
    write reports Unavailable for the client to retry with its request_id.
    """
    now = time.monotonic()
    checked_at = getattr(connection, "checked_at", None)
    if checked_at is None:  # the first checkout of a new connection
        _pooled_connections.add(connection)
        _hooks.connection_opened()
    if now - (checked_at or 0.0) >= PING_INTERVAL_SECONDS:
        connection.ping()
        connection.checked_at = now


def connect_arguments(settings: Settings, database: str | None = None) -> dict:
    """Keyword arguments for MySQLdb.connect, shared by the pool and tooling."""
    tls = {"ssl": {"ca": settings.mysql_ssl_ca}} if settings.mysql_ssl_ca else {}
    if settings.mysql_ssl_cert:
        tls["ssl"].update(cert=settings.mysql_ssl_cert, key=settings.mysql_ssl_key)
    return {
        **tls,
        "host": settings.mysql_host,
        "port": settings.mysql_port,
        "user": settings.mysql_user,
        "password": settings.mysql_password,
        "database": settings.mysql_database if database is None else database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": settings.mysql_connect_timeout,
        "read_timeout": settings.mysql_read_timeout,
        "write_timeout": settings.mysql_write_timeout,
    }


def init_pool(settings: Settings, hooks: Hooks | None = None) -> None:
    """Create the module-level pool. Call once per process, before serving."""
    global _pool, _deadlock_retries, _hooks, _connect_arguments
    _hooks = hooks or Hooks()
    _connect_arguments = connect_arguments(settings)
    common = {
        "creator": MySQLdb,
        "ping": (1, _ping),
        "failures": (MySQLdb.OperationalError, MySQLdb.InterfaceError),
        "isfatal": _is_lost_connection,
        **_connect_arguments,
    }
    if settings.db_pool == "persistent":
        # threading.local (in C) over DBUtils' pure-Python default: a
        # checkout is ~15% of a read's CPU otherwise. DBUtils avoids it only
        # for mod_wsgi, which clears it between requests; our workers do not.
        _pool = PersistentDB(closeable=False, threadlocal=threading.local, **common)
    else:
        _pool = PooledDB(
            maxconnections=settings.db_pool_size,
            maxcached=settings.db_pool_size,
            blocking=True,
            reset=True,
            **common,
        )
    _deadlock_retries = settings.db_deadlock_retries


def pooled_connections() -> int:
    """How many MySQL connections the pool holds now."""
    return len(_pooled_connections)


def database_answers() -> bool:
    """A fresh connection runs SELECT 1 within HEALTH_CHECK_TIMEOUT_SECONDS.

    Not through the pool: a pooled connection may wait MYSQL_READ_TIMEOUT on a
    hung server, and a new one also proves that connecting works.
    """
    timeouts = dict.fromkeys(("connect_timeout", "read_timeout", "write_timeout"), HEALTH_CHECK_TIMEOUT_SECONDS)
    try:
        connection = MySQLdb.connect(**{**_connect_arguments, **timeouts})
    except MySQLdb.Error:
        return False
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT 1")
        return cursor.fetchall() == ((1,),)
    except MySQLdb.Error:
        return False
    finally:
        connection.close()


def close_pool() -> None:
    """Close pooled connections (PersistentDB closes each with its thread)."""
    global _pool
    if isinstance(_pool, PooledDB):
        _pool.close()
    _pool = None


@contextmanager
def _connection() -> Iterator:
    if _pool is None:
        raise RuntimeError("db.init_pool() has not been called")
    try:
        connection = _pool.connection()
    except MySQLdb.Error as error:
        _hooks.error(error_code(error))
        raise DatabaseUnavailable(f"cannot connect to the database: {error.args[-1]}") from error
    try:
        yield connection
    finally:
        connection.close()


def _unavailable(error: MySQLdb.Error) -> DatabaseUnavailable | None:
    _hooks.error(error_code(error))
    if error_code(error) in UNAVAILABLE | RETRYABLE:
        return DatabaseUnavailable(f"database error {error_code(error)}: {error.args[-1]}")
    return None


def read(query: str, params: tuple = ()) -> list[tuple]:
    """Run one read-only query with autocommit on and return all rows."""
    with _connection() as connection:
        cursor = connection.cursor()
        try:
            cursor.execute(query, params)
            return list(cursor.fetchall())
        except MySQLdb.Error as error:
            raise (_unavailable(error) or error) from error
        finally:
            cursor.close()


def run_transaction(work: Callable[..., T]) -> T:
    """Run `work(cursor)` inside BEGIN..COMMIT; roll back whole on any error.

    Deadlocks and lock-wait timeouts run `work` again, up to
    DB_DEADLOCK_RETRIES times; `work` must therefore only touch the database.
    """
    for attempt in range(_deadlock_retries + 1):
        try:
            with _connection() as connection:
                return _run_once(connection, work)
        except MySQLdb.Error as error:
            if error_code(error) in RETRYABLE and attempt < _deadlock_retries:
                _hooks.error(error_code(error))
                _hooks.transaction_retried()
                logger.info("retrying transaction after error %s", error_code(error))
                time.sleep(0.01 * 2**attempt)
                continue
            raise (_unavailable(error) or error) from error
    raise AssertionError("unreachable")


def _run_once(connection, work: Callable[..., T]) -> T:
    connection.begin()
    cursor = connection.cursor()
    try:
        result = work(cursor)
        connection.commit()
        return result
    except BaseException:
        # A lost connection cannot roll back; the server discards the
        # transaction when the connection drops, so nothing half-applies.
        with suppress(MySQLdb.Error):
            connection.rollback()
        raise
    finally:
        with suppress(MySQLdb.Error):
            cursor.close()


def migrate(settings: Settings) -> list[str]:
    """Apply migrations/NNN_*.sql not yet applied, in order; return their names.

    A named lock serializes servers that start at the same time. MySQL commits
    DDL implicitly, so each file should be one logical change.
    """
    connection = MySQLdb.connect(**connect_arguments(settings))
    applied_now = []
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT GET_LOCK('ledger_migrations', 60)")
        if cursor.fetchone()[0] != 1:
            raise DatabaseUnavailable("another process holds the migration lock")
        cursor.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INT NOT NULL PRIMARY KEY,"
            " name VARCHAR(255) NOT NULL,"
            " applied_at_ms BIGINT NOT NULL"
            ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
        )
        cursor.execute("SELECT version FROM schema_migrations")
        applied = {row[0] for row in cursor.fetchall()}
        for path in sorted(MIGRATIONS_DIR.glob("[0-9]*.sql")):
            version = int(path.name.split("_", 1)[0])
            if version in applied:
                continue
            for statement in re.split(r";\s*$", path.read_text(encoding="utf-8"), flags=re.M):
                if statement.strip():
                    cursor.execute(statement)
            cursor.execute(
                "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (%s, %s, %s)",
                (version, path.name, int(time.time() * 1000)),
            )
            applied_now.append(path.name)
        cursor.execute("SELECT RELEASE_LOCK('ledger_migrations')")
    finally:
        connection.close()
    return applied_now


if __name__ == "__main__":
    if sys.argv[1:] != ["migrate"]:
        sys.exit("usage: python db.py migrate")
    try:
        names = migrate(settings_module.load())
    except settings_module.SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except MySQLdb.Error as error:
        print(f"error: cannot migrate: {error.args[-1]}", file=sys.stderr)
        sys.exit(1)
    print("applied: " + ", ".join(names) if names else "schema is up to date")
