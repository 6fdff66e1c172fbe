"""The MySQL layer: one module-level DBUtils pool, reads, transactions, migrations.

Handlers call `read()` for autocommit queries and `run_transaction()` for every write. A database outage raises
`DatabaseUnavailable`, which the server sends as `Unavailable` (safe to retry) whatever the method.
"""

import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import MySQLdb
from dbutils.persistent_db import PersistentDB
from dbutils.pooled_db import PooledDB

from servicekit import migrate as migrations
from servicekit import mysql, startup
from servicekit.errors import DatabaseUnavailable, DuplicateKey
from servicekit.exit_statuses import EXIT_INTERRUPTED
from servicekit.settings import ServerSettings, SettingsError, load

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
CONFIG_FILE = Path(__file__).with_name("config.env")
PING_INTERVAL_SECONDS = 1.0

logger = logging.getLogger(__name__)
REFUSED = {"client_error": "statements the database refused"}  # one per request while it lasts: capped
RERUN = {"client_error": "transactions re-run"}  # every lock wait that did not clear, while a lock is held
T = TypeVar("T")

_pool: PersistentDB | PooledDB | None = None
_deadlock_retries = 0
_hooks = mysql.PoolHooks()
_connect_arguments: dict = {}
_outages = mysql.Outage()
_switchover = mysql.Switchover()
# The MySQL connections the pool holds: each joins at its first checkout and
# leaves when DBUtils drops it (closed, replaced, or its thread ended).
_pooled_connections: weakref.WeakSet = weakref.WeakSet()


# Per thread: why the pool's last attempt to connect failed. DBUtils swallows the error when it reconnects a
# lost connection (at checkout, or after a failed statement) and hands back the dead one, whose next statement
# says only "Server has gone away": the reason (wrong password, too many connections) would never be logged.
class _ConnectFailure(threading.local):
    error: MySQLdb.Error | None = None  # each thread's until its first connect: a PooledDB thread may never make one


_connect_failure = _ConnectFailure()


def _connect(*args, **kwargs) -> MySQLdb.Connection:
    """MySQLdb.connect for the pool, keeping in _connect_failure the reason it failed, and stamping the session
    with the switchover's wave it was opened in (read before connecting: a wave begun meanwhile retires it) and
    the time, from which its first check is due (_ping)."""
    opened_in = _switchover.wave
    try:
        connection = MySQLdb.connect(*args, **kwargs)
    except MySQLdb.Error as error:
        _connect_failure.error = error
        raise
    _connect_failure.error = None
    connection.opened_in, connection.opened_at = opened_in, time.monotonic()
    return connection


_connect.dbapi = MySQLdb  # DBUtils takes the module's threadsafety and exceptions from it


def _is_lost_connection(error: BaseException) -> bool:
    return mysql.error_code(error) in mysql.LOST_CONNECTION


def _ping(connection: MySQLdb.Connection) -> bool | None:
    """DBUtils' liveness check at checkout; False or raising means "reconnect".

    A session opened before its server was found read-only is replaced first, before any statement: it may be on
    the old primary (mysql.Switchover). And the check itself reads whether the server is read-only, at the round
    trip that proves the session alive: a session on a demoted primary that only reads, or one reopened there
    before MYSQL_HOST moved, is replaced within a second too, with no write refused to tell.

    DBUtils' own check calls ping(False), which mysqlclient 2.3 deprecates: under `-W error` that warning would
    make every checkout reconnect silently. And a round trip per checkout doubles the database work of a read, so
    a connection is checked at most once per PING_INTERVAL_SECONDS, counted from when it was opened: one reopened
    on a server still read-only is not checked, and replaced, again at its next checkout. One lost in between
    fails its statement: DBUtils reconnects and repeats a read, and a write begins again on a new connection
    (_begin).
    """
    if connection.opened_in != _switchover.wave:
        return False
    checked_at = getattr(connection, "checked_at", None)
    if checked_at is None:  # the first checkout of a new connection
        _pooled_connections.add(connection)
        _hooks.connection_opened()
        checked_at = connection.checked_at = connection.opened_at  # connecting proved it alive
    now = time.monotonic()
    if now - checked_at >= PING_INTERVAL_SECONDS:
        if mysql.read_only(connection):
            _switchover.found(connection.opened_in, "found by a session's check")
            return False
        connection.checked_at = now
    return None


def init_pool(settings: ServerSettings, hooks: mysql.PoolHooks | None = None) -> None:
    """Create the module-level pool. Call once per process, before serving.

    Why PersistentDB by default: the server runs a fixed set of worker
    threads, so one steady connection per worker is exactly enough; there is
    no pool lock to contend and a worker never waits for a connection.
    `DB_POOL=pooled` switches to PooledDB (a shared, bounded pool of
    `DB_POOL_SIZE`), which suits thread counts that change.
    """
    global _pool, _deadlock_retries, _hooks, _connect_arguments
    _hooks = hooks or mysql.PoolHooks()
    _connect_arguments = mysql.connect_arguments(settings)
    common = {
        "creator": _connect,
        "ping": (1, _ping),
        "failures": (MySQLdb.OperationalError, MySQLdb.InterfaceError),
        "isfatal": _is_lost_connection,
        **_connect_arguments,
    }
    if settings.db_pool == "persistent":
        # threading.local (in C) over DBUtils' pure-Python default, which
        # makes every checkout cost more. DBUtils avoids it only
        # for mod_wsgi, which clears it between requests; our workers do not.
        _pool = PersistentDB(closeable=False, threadlocal=threading.local, **common)
    else:
        _pool = PooledDB(
            maxconnections=settings.db_pool_size,
            maxcached=settings.db_pool_size,
            blocking=True,
            # Not a ROLLBACK at every return (True): autocommit is on and every transaction begins with begin(),
            # which DBUtils rolls back if still open. A ROLLBACK on a lost connection reconnects first, which
            # on a hung database takes MYSQL_CONNECT_TIMEOUT once more, past the client's timeout.
            reset=False,
            **common,
        )
    _deadlock_retries = settings.db_deadlock_retries


def close_pool() -> None:
    """Close pooled connections (PersistentDB closes each with its thread)."""
    global _pool
    if isinstance(_pool, PooledDB):
        _pool.close()
    _pool = None


def pooled_connections() -> int:
    """How many MySQL connections the pool holds now."""
    return len(_pooled_connections)


def database_answers() -> bool:
    """The health check: a fresh connection answers SELECT 1 within seconds."""
    return mysql.answers(_connect_arguments)


@contextmanager
def _connection() -> Iterator:
    """A pooled connection, and what its use says of the database: down (an outage error), or answering."""
    if _pool is None:
        raise RuntimeError("db.init_pool() has not been called")
    with _outages.attempt():
        _connect_failure.error = None
        try:
            connection = _pool.connection()
            if failure := _connect_failure.error:  # its check failed, and so did the reconnect: it is the dead one
                # Given back, unused: PooledDB counts it checked out until then, and the error kept for this
                # thread (its traceback holds this frame) would keep it from its finalizer until the next call.
                _connect_failure.error = None
                connection.close()
                raise failure
        except MySQLdb.Error as error:  # whatever the reason, no connection: retry later
            _hooks.error(mysql.error_code(error))
            _outages.failed(f"cannot connect: {error.args[-1]}")
            raise DatabaseUnavailable(f"cannot connect to the database: {error.args[-1]}") from error
        try:
            yield connection
        except MySQLdb.Error as error:
            if mysql.error_code(error) in mysql.READ_ONLY:  # the session may be on a demoted primary
                _switchover.refused(connection.dbapi_connection.opened_in, error)
            if mysql.error_code(error) in mysql.UNAVAILABLE:
                reconnect = _connect_failure.error  # DBUtils tried a new connection, in vain: say why
                why = f"; reconnecting: {reconnect.args[-1]}" if reconnect is not None else ""
                _outages.failed(f"error {mysql.error_code(error)}: {error.args[-1]}{why}")
            else:  # a deadlock, a duplicate key, bad SQL: it answered
                _outages.answered()
            raise
        except Exception:  # the request's own error (NotFound, a reused request_id): it answered
            _outages.answered()
            raise
        else:
            _outages.answered()
        finally:
            connection.close()


def _unavailable(error: MySQLdb.Error) -> DatabaseUnavailable | None:
    """The DatabaseUnavailable to raise for `error`, None if it is not an outage or a lock that did not clear."""
    code = mysql.error_code(error)
    _hooks.error(code)
    if code in mysql.REFUSED_FOR_NOW:  # the database answers: no outage is logged, so this says why writes fail
        logger.warning("the database refused a statement: error %s: %s", code, error.args[-1], extra=REFUSED)
    if code in mysql.UNAVAILABLE | mysql.RETRYABLE | mysql.REFUSED_FOR_NOW:
        return DatabaseUnavailable(f"database error {code}: {error.args[-1]}")
    return None


def read(query: str, params: tuple = ()) -> list[tuple]:
    """Run one read-only query with autocommit on and return all rows."""
    try:
        with _connection() as connection:
            cursor = connection.cursor()
            try:
                cursor.execute(query, params)
                return list(cursor.fetchall())
            finally:
                cursor.close()
    except MySQLdb.Error as error:
        raise (_unavailable(error) or error) from error


def run_transaction(work: Callable[..., T]) -> T:
    """Run `work(cursor)` inside BEGIN..COMMIT; roll back whole on any error.

    Deadlocks and lock-wait timeouts run `work` again, up to
    DB_DEADLOCK_RETRIES times; `work` must therefore only touch the database.
    A duplicate unique key raises DuplicateKey, sent as Conflict.
    """
    for attempt in range(_deadlock_retries + 1):
        try:
            with _connection() as connection:
                result = _run_once(connection, work)
        except MySQLdb.Error as error:
            if mysql.error_code(error) == mysql.DUPLICATE_KEY:  # Conflict: every write (request_id) declares it
                _hooks.error(mysql.DUPLICATE_KEY)
                raise DuplicateKey(f"conflicts with an existing row: {error.args[-1]}") from error
            if mysql.error_code(error) in mysql.RETRYABLE and attempt < _deadlock_retries:
                _hooks.error(mysql.error_code(error))
                _hooks.transaction_retried()
                logger.info("retrying transaction after error %s", mysql.error_code(error), extra=RERUN)
                time.sleep(0.01 * 2**attempt)
                continue
            raise (_unavailable(error) or error) from error
        return result
    raise AssertionError("unreachable")


def _run_once(connection, work: Callable[..., T]) -> T:
    _begin(connection)
    cursor = connection.cursor()
    try:
        result = work(cursor)
        connection.commit()
        return result
    except BaseException as error:
        # A lost connection cannot roll back; the server discards the
        # transaction when the connection drops, so nothing half-applies.
        # Once DBUtils failed to reconnect it, a rollback would only try again
        # (MYSQL_CONNECT_TIMEOUT more on a hung database, past the client's timeout).
        if not (_is_lost_connection(error) and _connect_failure.error is not None):
            with suppress(MySQLdb.Error):
                connection.rollback()
        raise
    finally:
        with suppress(MySQLdb.Error):
            cursor.close()


def _begin(connection) -> None:
    """BEGIN, on a new session if the database closed this one since it was last checked (a KILL, a restart, a
    proxy's idle limit; db.py pings at most once per PING_INTERVAL_SECONDS): nothing of the transaction was
    sent, so nothing can have been applied, and the write need not fail, nor the database be logged down."""
    try:
        connection.begin()
    except MySQLdb.Error as error:
        if not _is_lost_connection(error):
            raise
        _connect_failure.error = None
        with suppress(MySQLdb.Error):
            connection.rollback()  # DBUtils replaces a lost connection here, if it can connect
        if _connect_failure.error is not None:  # it could not: the outage is real, and this says why
            raise
        connection.begin()


def migrate(settings: ServerSettings) -> list[str]:
    """Apply the kit's and then this service's pending migrations (MIGRATIONS_DIR); return their names."""
    return migrations.apply(mysql.connect_arguments(settings), MIGRATIONS_DIR, settings.db_migration_lock_timeout)


def main(argv: list[str]) -> int:
    """`python db.py migrate`: one line on stdout, or one on stderr and status 1 or 2."""
    if argv != ["migrate"]:
        asked = argv in (["-h"], ["--help"], ["migrate", "-h"], ["migrate", "--help"])  # as server.py answers it
        print("usage: python db.py migrate", file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    try:
        names = startup.migrate(sys.modules[__name__], load(ServerSettings, CONFIG_FILE))  # this module
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except startup.StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:  # after the file that was running, which migrations run whole
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print("applied: " + ", ".join(names) if names else "schema is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
