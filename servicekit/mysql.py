"""MySQL knowledge shared by db.py's pool and the migrations: error numbers, connection arguments, outages.

Which error numbers mean "the connection is gone", "the database cannot serve now" and "run the transaction
again" decides what a client sees: `Unavailable` (retry), a re-run inside the service, or INTERNAL_ERROR. The
health check's query, the outage's log, and one call at a time trying a database that is down are here too.
"""

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import MySQLdb

from servicekit.errors import DatabaseUnavailable
from servicekit.settings import ServerSettings

# The connection itself is gone: only these may make DBUtils replace it
# (and, outside a transaction, repeat the statement).
LOST_CONNECTION = frozenset({2006, 2013, 2055})
# The database cannot serve this now; the client may retry.
UNAVAILABLE = LOST_CONNECTION | {1040, 1053, 1927, 2002, 2003, 2005, 2026, 4031}
# The transaction itself caused these; running it again usually succeeds.
RETRYABLE = frozenset({1205, 1213})  # lock wait timeout, deadlock
# The server is read-only, as a failover leaves the old primary: read_only (MariaDB, MySQL) and super_read_only
# (MySQL) refuse a write with 1290; innodb_read_only with 1036 ("Table is read only"), or 1836. Their message says
# so: 1290 is also --secure-file-priv's, which no failover explains.
READ_ONLY = frozenset({1290, 1836, 1036})
READ_ONLY_MESSAGE = re.compile(r"read[- ]only", re.IGNORECASE)
# A pooled session's liveness check, which also tells whether its server is read-only at the same round trip:
# read_only (super_read_only sets it on MySQL), and innodb_read_only, by which Aurora marks its readers (the writer
# a failover demotes is restarted as one). Both are global and need no privilege.
READ_ONLY_CHECK = "SELECT @@global.read_only, @@global.innodb_read_only"
# While the server stays read-only (maintenance, a slow failover), each refused write, and each session's check,
# would retire every session: at most one wave a second, so that each session reconnects once a second at most,
# not at every call.
READ_ONLY_WAVE_SECONDS = 1.0
# The database answers but refuses this statement for now: read-only while a primary is switched over, or an
# operator's KILL QUERY (1317). Nothing was applied; the client may retry. Not an outage: reads go on. (A
# statement time limit is not here: a retry would run over it again.)
REFUSED_FOR_NOW = READ_ONLY | {1317}
DUPLICATE_KEY = 1062  # a write duplicated a unique key: the request conflicts with the data
HEALTH_CHECK_TIMEOUT_SECONDS = 2
IDLE_SESSION_READ_TIMEOUTS = 6  # a session idle this many MYSQL_READ_TIMEOUTs is closed by the database
OUTAGE_REPORT_SECONDS = 10.0
# Each outage's start and end: a database some sessions reach and others cannot (a password rotated while
# sessions were open) starts and ends one with nearly every call, so the lines are capped as a client's are.
OUTAGE_CHANGES = {"client_error": "database outages begun or ended"}
# One line per wave of sessions retired, and any client's call can begin one while the server stays read-only.
READ_ONLY_WAVES = {"client_error": "read-only refusals or checks that retired the pool's sessions"}
_NO_GATE = nullcontext()  # reusable: it keeps no state

logger = logging.getLogger(__name__)


@dataclass
class PoolHooks:
    """What db.py's pool reports, for metrics; the defaults do nothing."""

    connection_opened: Callable[[], None] = lambda: None
    error: Callable[[int | None], None] = lambda code: None
    transaction_retried: Callable[[], None] = lambda: None


def error_code(error: BaseException) -> int | None:
    """The MySQL error number of a driver exception, if it carries one."""
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def connect_arguments(settings: ServerSettings) -> dict:
    """Keyword arguments for MySQLdb.connect, shared by the pool and the migrations."""
    tls = {}
    if settings.mysql_ssl_ca:  # required, and the certificate must name MYSQL_HOST: never plain text, never MITM
        tls = {"ssl": {"ca": settings.mysql_ssl_ca}, "ssl_mode": "VERIFY_IDENTITY"}
    if settings.mysql_ssl_cert:
        tls["ssl"].update(cert=settings.mysql_ssl_cert, key=settings.mysql_ssl_key)
    return {
        **tls,
        "host": settings.mysql_host,
        "port": settings.mysql_port,
        "user": settings.mysql_user,
        "password": settings.mysql_password,
        "database": settings.mysql_database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": settings.mysql_connect_timeout,
        "read_timeout": settings.mysql_read_timeout,
        "write_timeout": settings.mysql_write_timeout,
        "init_command": _session_bounds(settings.mysql_read_timeout, settings.db_deadlock_retries),
    }


def _session_bounds(read_timeout: int, retries: int) -> str:
    """A session's row and table lock waits (error 1205), every re-run of a transaction included, end within
    half its read timeout: the server's own (50 s for rows; a day or a year for tables) would outlast it, and a
    timed-out read looks like a database outage. A migration waits no longer, rather than queue every query on
    its table behind it.

    And the database closes a session idle for IDLE_SESSION_READ_TIMEOUTS read timeouts: a server cut off by
    the network mid-transaction leaves its session, and the row locks it holds, for MySQL's wait_timeout (8
    hours) otherwise. No session of the kit's is idle inside a transaction for longer than a statement takes;
    a pooled one closed so is replaced at its next checkout (db.py pings one unused for a second).
    """
    seconds = max(1, read_timeout // (2 * (retries + 1)))  # integers from settings: nothing to escape
    idle = IDLE_SESSION_READ_TIMEOUTS * read_timeout
    return f"SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}, wait_timeout = {idle}"


def read_only(connection: MySQLdb.Connection) -> bool:
    """Whether the session's server is read-only (READ_ONLY_CHECK); raises if the session is lost.

    Any answer proves the session alive: a server that refuses the query (one without innodb_read_only: TiDB,
    Vitess) is taken as not read-only, rather than every session replaced at each check.
    """
    cursor = connection.cursor()
    try:
        cursor.execute(READ_ONLY_CHECK)
        values = cursor.fetchone()
    except MySQLdb.Error as error:
        if error_code(error) is None or error_code(error) in UNAVAILABLE:
            raise
        return False
    finally:
        cursor.close()
    # 0 or 1; newer MariaDB (MDEV-36425) makes read_only an enum, which reads OFF, ON, NO_LOCK or NO_LOCK_NO_ADMIN;
    # a proxy may send either as text.
    return any(str(value).upper() not in ("0", "OFF") for value in values)


def answers(arguments: dict) -> bool:
    """A fresh connection runs SELECT 1 within HEALTH_CHECK_TIMEOUT_SECONDS.

    Not through the pool: a pooled connection may wait MYSQL_READ_TIMEOUT on
    a hung server, and a new one also proves that connecting works.
    """
    timeouts = dict.fromkeys(("connect_timeout", "read_timeout", "write_timeout"), HEALTH_CHECK_TIMEOUT_SECONDS)
    try:
        connection = MySQLdb.connect(**{**arguments, **timeouts})
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


class Outage:
    """Whether the database is down; one WARNING when it stops answering, a
    count every OUTAGE_REPORT_SECONDS while it stays down, one INFO when it
    answers again.

    While it is down, one call at a time tries it (`attempt()`) and the
    others fail at once: a hung database then holds one worker until its
    read times out, not every worker, so `ping` and `health`, which need no
    pooled connection, are still answered. Only outage errors (UNAVAILABLE)
    mark it down; any answer, an error of the request's own included, marks
    it up. `answered()` runs after every use of a connection, so it only
    reads a flag unless the database was down.
    """

    def __init__(self) -> None:
        self.down = False
        self._lock = threading.Lock()
        self._since = 0.0
        self._failures = 0
        self._next_report = 0.0
        self._trying = False

    def attempt(self) -> AbstractContextManager:
        """Around each use of a pooled connection; DatabaseUnavailable at once
        if the database is down and another call is trying it."""
        # Every request passes here: while the database answers, a shared no-op, not a new generator.
        return self._gate() if self.down else _NO_GATE

    @contextmanager
    def _gate(self) -> Iterator[None]:
        with self._lock:
            if self._trying:
                self._failures += 1
                raise DatabaseUnavailable("the database is unavailable (another call is trying it)")
            self._trying = True
        try:
            yield
        finally:
            self._trying = False

    def failed(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            if not self.down:
                self.down, self._since, self._failures = True, now, 1
                self._next_report = now + OUTAGE_REPORT_SECONDS
                logger.warning("database unavailable: %s", reason, extra=OUTAGE_CHANGES)
            elif now >= self._next_report:
                self._next_report = now + OUTAGE_REPORT_SECONDS
                logger.warning(
                    "database still unavailable after %.0f s: %d failed calls (%s)",
                    now - self._since,
                    self._failures,
                    reason,
                )

    def answered(self) -> None:
        if not self.down:
            return
        with self._lock:
            if self.down:
                self.down = False
                logger.info(
                    "database answers again after %.1f s; %d calls failed meanwhile",
                    time.monotonic() - self._since,
                    self._failures,
                    extra=OUTAGE_CHANGES,
                )


class Switchover:
    """Which pooled sessions a read-only server retires: every one opened before it was found.

    A server that refuses a write as read-only, or that a session's liveness check finds read-only, has stopped
    being the primary (a failover demoted it, or set it read-only while MYSQL_HOST is moved to the new one).
    Every session it holds would go on refusing writes, and reading its data as it goes stale, for as long as it
    keeps the session; a new one goes wherever MYSQL_HOST leads now. So each session is stamped with the
    `wave` in which it was opened, and the pool replaces one of an older wave at its next checkout (db.py's
    pinger: an attribute compare). A session of the current wave found read-only begins a new wave, with one
    WARNING, unless one began within the last READ_ONLY_WAVE_SECONDS; one found on a session already retired
    (other workers refused at once, before their next checkout) says nothing new. Each session is thus replaced
    at most once a second, and one opened after a wave is kept unless it is found read-only in turn.
    """

    def __init__(self) -> None:
        self.wave = 0
        self._lock = threading.Lock()
        self._next_wave = 0.0  # time.monotonic(): no wave begins before it

    def refused(self, opened_in: int, error: MySQLdb.Error) -> None:
        """A session opened in wave `opened_in` was refused with `error` (one of READ_ONLY)."""
        if READ_ONLY_MESSAGE.search(str(error.args[-1])):
            self.found(opened_in, f"error {error_code(error)}")

    def found(self, opened_in: int, how: str) -> None:
        """A session opened in wave `opened_in` found its server read-only (`how`, for the log)."""
        now = time.monotonic()
        with self._lock:
            if opened_in != self.wave or now < self._next_wave:
                return
            self.wave += 1
            self._next_wave = now + READ_ONLY_WAVE_SECONDS
        logger.warning(
            "the database is read-only (%s): replacing each pooled session opened before, at its next use",
            how,
            extra=READ_ONLY_WAVES,
        )
