"""The database through the kit: outages, lock waits, the outage log, migrations, the write record."""

import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import MySQLdb
import pytest

import db
from counters import counters_thrift
from counters_testing import assert_consistent, run_adds
from helpers.mysql import connect_kwargs, connections_opened, sql, statement_waits
from helpers.processes import PROJECT_ENV, ROOT, run_python
from helpers.proxy import Forwarder
from servicekit import migrate, mysql
from servicekit.client import ServerUnreachable
from servicekit.errors import DatabaseUnavailable, RequestIdReused
from servicekit.idempotency import IdempotentWrites
from servicekit.settings import ServerSettings, load
from tools.throwaway_db import wait_for

Unavailable = counters_thrift.base.Unavailable


def test_a_database_outage_is_unavailable_then_recovers(start_server, own_database):
    server = start_server(**own_database.env, MYSQL_CONNECT_TIMEOUT="2")
    with server.client(retries=0) as once, server.client() as retrying:
        once.add("outage", 100)
        own_database.stop()
        with pytest.raises(Unavailable):
            once.get("outage")
        with pytest.raises(Unavailable):
            once.add("outage", 1, "retry-after-outage")
        assert once.health().database is False
        own_database.start()
        wait_for(lambda: once.health().database, 10, "the service to reconnect")
        assert retrying.add("outage", 1, "retry-after-outage").total == 101
        assert retrying.get("outage").total == 101


SERVICE_USER = {"MYSQL_USER": "service", "MYSQL_PASSWORD": "service-pw"}


def _as_the_services_own_user(start_server, own_database, **env: str):
    """A server that connects as a user of its own, not root: read_only and a password rotation bind it."""
    _add_the_services_own_user(own_database.env)
    return start_server(**{**own_database.env, **SERVICE_USER, **env})


def _add_the_services_own_user(database: dict[str, str]) -> None:
    sql(database, "CREATE USER 'service'@'%' IDENTIFIED BY 'service-pw'")
    sql(database, f"GRANT ALL ON `{database['MYSQL_DATABASE']}`.* TO 'service'@'%'")


def test_a_read_only_database_is_unavailable_for_writes_until_it_takes_them_again(start_server, own_database):
    # read_only binds users without SUPER, as a service's own user is
    server = _as_the_services_own_user(start_server, own_database)
    with server.client(deadline=2) as client:
        client.add("read-only", 1)
        sql(own_database.env, "SET GLOBAL read_only = 1")  # as while a primary is switched over
        try:
            with pytest.raises(Unavailable, match="database error 1290"):  # retried until the deadline
                client.add("read-only", 1, "during-switch-over")
            assert client.get("read-only").total == 1  # reads go on
            assert client.health().database is True
        finally:
            sql(own_database.env, "SET GLOBAL read_only = 0")
        assert client.add("read-only", 1, "during-switch-over").total == 2
    assert "Traceback" not in server.log()
    assert re.search(r" WARNING \S+ \[\d+\] the database refused a statement: error 1290: ", server.log())


@pytest.mark.parametrize("pool", ["persistent", "pooled"])
def test_after_a_failover_writes_and_every_workers_reads_go_to_the_new_primary(
    start_server, own_database, another_database, pool
):
    # The old primary is made read-only and MYSQL_HOST (a VIP, a DNS name: here a forwarder) moves to the new
    # one, a replica of it; the sessions the service holds to the old one stay open, as that server keeps them.
    old, new = own_database.env, another_database.env
    for database in (old, new):
        _add_the_services_own_user(database)
    migrate.apply(connect_arguments(new), ROOT / "tests/servicekit/migrations", 5)
    vip = Forwarder(own_database.port)
    try:
        through_the_vip = {**old, **SERVICE_USER, "MYSQL_PORT": str(vip.port)}
        server = start_server(**through_the_vip, THRIFT_WORKERS="2", DB_POOL=pool)
        with server.client(deadline=4, pool_size=2) as client:
            assert client.add("failed over", 1).total == 1
            for row in sql(old, "SELECT id, name, total FROM counters"):  # replicated
                sql(new, "INSERT INTO counters (id, name, total) VALUES (%s, %s, %s)", row)
            _every_worker_reads(client)
            wait_for(lambda: _service_sessions(old) == 2, 5, "a session of each worker on the old primary")
            sql(old, "SET GLOBAL read_only = 1")
            assert client.health().database is True  # it answers: reads go on, and the switch takes seconds
            vip.target_port = another_database.port
            assert client.add("failed over", 1).total == 2  # refused by the old primary, then retried
            assert sql(new, "SELECT total FROM counters WHERE name = 'failed over'") == [(2,)]
            _every_worker_reads(client)
            wait_for(lambda: _service_sessions(old) == 0, 5, "every session to leave the old primary")
            for _ in range(6):
                assert client.get("failed over").total == 2  # not the old primary's 1
    finally:
        vip.close()
    # Refused, or found at a session's check if more than a second passed since the last one
    read_only = r" WARNING \S+ \[\d+\] the database is read-only \((error 1290|found by a session's check)\): "
    assert len(re.findall(read_only, server.log())) == 1
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("pool", ["persistent", "pooled"])
def test_after_a_failover_with_no_write_every_workers_reads_go_to_the_new_primary(
    start_server, own_database, another_database, pool
):
    # A server whose traffic is reads: no write is refused to tell it of the failover, yet its reads must not go
    # on returning the old primary's stale rows.
    with _reading_through_a_vip(start_server, own_database, another_database, DB_POOL=pool) as (server, client, vip):
        sql(own_database.env, "SET GLOBAL read_only = 1")
        vip.target_port = another_database.port
        wait_for(lambda: _none_left_after_every_worker_reads(client, own_database.env), 5, "every session to leave")
        for _ in range(6):
            assert client.get("only read").total == 2  # the new primary's, not the old one's stale 1
    assert len(re.findall(r" WARNING \S+ \[\d+\] the database is read-only \(found ", server.log())) == 1
    assert "Traceback" not in server.log()


def test_sessions_reopened_on_the_old_primary_before_the_vip_moved_leave_it_with_no_further_write(
    start_server, own_database, another_database
):
    # A write is refused before the DNS name moves: the sessions it retires reopen on the old primary, stamped
    # after the refusal, and no write follows to be refused on them.
    with _reading_through_a_vip(start_server, own_database, another_database) as (server, client, vip):
        sql(own_database.env, "SET GLOBAL read_only = 1")
        with pytest.raises(Unavailable, match="database error 1290"):
            client.add("only read", 1, "refused")
        _every_worker_reads(client)  # each worker's session is replaced, by one on the old primary again
        vip.target_port = another_database.port
        wait_for(lambda: _none_left_after_every_worker_reads(client, own_database.env), 5, "every session to leave")
        for _ in range(6):
            assert client.get("only read").total == 2
    assert "Traceback" not in server.log()


@contextlib.contextmanager
def _reading_through_a_vip(start_server, own_database, another_database, **env: str) -> Iterator:
    """A server of 2 workers, as the service's own user, whose session on each is on the old primary through a
    forwarder (a VIP); the counter 'only read' is 1 there and 2 on the new primary. Yields server, client, vip."""
    old, new = own_database.env, another_database.env
    for database, total in ((old, 1), (new, 2)):
        _add_the_services_own_user(database)
        migrate.apply(connect_arguments(database), ROOT / "tests/servicekit/migrations", 5)
        sql(database, "INSERT INTO counters (name, total) VALUES ('only read', %s)", (total,))
    vip = Forwarder(own_database.port)
    try:
        server = start_server(**{**old, **SERVICE_USER, "MYSQL_PORT": str(vip.port)}, THRIFT_WORKERS="2", **env)
        with server.client(deadline=4, retries=0, pool_size=2) as client:
            assert client.get("only read").total == 1
            _every_worker_reads(client)
            wait_for(lambda: _service_sessions(old) == 2, 5, "a session of each worker on the old primary")
            yield server, client, vip
    finally:
        vip.close()


def _refused_write(client, attempt: int) -> None:
    with pytest.raises(Unavailable, match="database error 1290"):
        client.add("stays read-only", 1, f"refused-{attempt}")


def _read(client, attempt: int) -> None:
    assert client.get("stays read-only").total == 1


@pytest.mark.parametrize("call", [_refused_write, _read], ids=["writes", "reads"])
def test_while_the_database_stays_read_only_each_session_is_replaced_once_a_second_not_at_every_call(
    start_server, own_database, call
):
    # Maintenance, or a failover whose DNS name is slow to move: every write is refused, on the same server, and
    # each session reopened there is found read-only again by its check, which must come a second after it was
    # opened, not at its next checkout.
    server = _as_the_services_own_user(start_server, own_database, THRIFT_WORKERS="2")
    with server.client(retries=0) as client:
        client.add("stays read-only", 1)
        sql(own_database.env, "SET GLOBAL read_only = 1")
        try:
            opened_before, started = connections_opened(own_database.env), time.monotonic()
            for attempt in itertools.count():  # calls as fast as they are answered, for a few checks' time
                call(client, attempt)
                if (seconds := time.monotonic() - started) >= 2:
                    break
            opened = connections_opened(own_database.env) - opened_before - 1  # this query's own connection
        finally:
            sql(own_database.env, "SET GLOBAL read_only = 0")
    # Each of the 2 workers' sessions replaced at most once a second (without the limits: at nearly every call).
    assert opened <= 2 * (int(seconds) + 2), f"{opened} sessions opened in {seconds:.1f} s, {attempt + 1} calls"


def test_a_refusal_that_is_not_read_only_retires_no_session():
    switchover = mysql.Switchover()
    file_privilege = "The MariaDB server is running with the --secure-file-priv option so it cannot execute this"
    switchover.refused(0, MySQLdb.OperationalError(1290, file_privilege))
    assert switchover.wave == 0
    switchover.refused(0, MySQLdb.OperationalError(1290, file_privilege.replace("secure-file-priv", "read-only")))
    assert switchover.wave == 1


class _Answering:
    """A session whose server answers the read-only check with `error` (a MySQLdb error), or with `values`."""

    def __init__(self, error: MySQLdb.Error | None = None, values: tuple = ()) -> None:
        self.error, self.values = error, values

    def cursor(self):
        return self

    def execute(self, query: str) -> None:
        if self.error:
            raise self.error

    def fetchone(self) -> tuple:
        return self.values

    def close(self) -> None:
        pass


def test_the_read_only_check_takes_a_refusal_as_an_answer_and_a_lost_session_as_lost():
    # TiDB and Vitess lack innodb_read_only: replacing every session at each check would say nothing of why.
    assert mysql.read_only(_Answering(MySQLdb.OperationalError(1193, "Unknown system variable"))) is False
    with pytest.raises(MySQLdb.OperationalError):
        mysql.read_only(_Answering(MySQLdb.OperationalError(2013, "Lost connection to server during query")))
    assert mysql.read_only(_Answering(values=("0", "OFF"))) is False  # as text, through a proxy
    assert mysql.read_only(_Answering(values=("0", "ON"))) is True


def _every_worker_reads(client) -> None:
    """A read on each of the two workers: the first holds its worker while the second is served."""
    readers = [threading.Thread(target=client.call, args=("hold", 0.3)) for _ in range(2)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()


def _none_left_after_every_worker_reads(client, database: dict[str, str]) -> bool:
    """A read on each worker (each checks its session out), then whether no session of the service's is on it."""
    _every_worker_reads(client)
    return _service_sessions(database) == 0


def _service_sessions(database: dict[str, str]) -> int:
    return sql(database, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'service'")[0][0]


def test_credentials_refused_after_a_restart_are_logged_as_the_reason(start_server, own_database):
    # The restart loses the pool's sessions; DBUtils' reconnect is refused (a password rotated meanwhile) and
    # swallowed: the log must say so, not the lost session's "Server has gone away", or nobody knows what to mend.
    server = _as_the_services_own_user(start_server, own_database)
    with server.client(retries=0) as client:
        client.add("rotated", 1)
        own_database.stop()
        own_database.start()
        sql(own_database.env, "ALTER USER 'service'@'%' IDENTIFIED BY 'rotated-pw'")
        for _ in range(3):  # whichever worker takes each call
            with pytest.raises(Unavailable):
                client.get("rotated")
        wait_for(lambda: "database unavailable" in server.log(), 5, "the outage line")
        assert re.search(r" WARNING \S+ \[\d+\] database unavailable: .*Access denied for user 'service'", server.log())
        sql(own_database.env, "ALTER USER 'service'@'%' IDENTIFIED BY 'service-pw'")
        wait_for(lambda: _answers(client, "rotated"), 10, "the service to connect again")


def test_a_write_on_a_session_the_database_killed_is_applied_on_a_new_one(start_server, own_database):
    # KILL CONNECTION (an operator, a proxy's idle limit, a restart) within the second the pool does not ping a
    # session in: the write's BEGIN finds it gone, before anything of the transaction was sent.
    database = own_database.env
    server = start_server(**database, THRIFT_WORKERS="1")  # one pooled session, which every call uses
    with server.client(retries=0) as client:
        client.add("killed", 1)
        query = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = %s AND ID != CONNECTION_ID()"
        for (session,) in sql(database, query, (database["MYSQL_DATABASE"],)):
            sql(database, f"KILL CONNECTION {session}")
        assert client.add("killed", 1).total == 2  # no Unavailable for a stock client that does not retry
    assert "database unavailable" not in server.log()


def test_an_outage_logs_one_warning_then_one_info_when_the_database_answers(start_server, own_database):
    server = start_server(**own_database.env, MYSQL_CONNECT_TIMEOUT="2")
    with server.client(retries=0) as client:
        client.add("logged outage", 1)
        own_database.stop()
        for _ in range(5):
            with pytest.raises(Unavailable):
                client.get("logged outage")
        own_database.start()
        wait_for(lambda: _answers(client), 10, "the database to answer")
        wait_for(lambda: "database answers again" in server.log(), 5, "the recovery line")
    log = server.log()
    assert len(re.findall(r" WARNING \S+ \[\d+\] database unavailable: ", log)) == 1
    assert re.search(r" INFO \S+ \[\d+\] database answers again after [\d.]+ s; \d+ calls failed meanwhile", log)


def _answers(client, name: str = "logged outage") -> bool:
    try:
        return client.get(name).total == 1
    except Unavailable:
        return False


def test_the_database_stopped_mid_load_gives_unavailable_then_recovers(start_server, own_database):
    server = start_server(**own_database.env, MYSQL_CONNECT_TIMEOUT="2", MYSQL_READ_TIMEOUT="3")
    names = [f"outage-{n}" for n in range(6)]
    with server.client(pool_size=8, retries=2, deadline=4, timeout=5) as client:

        def restart_database() -> None:
            own_database.stop()
            time.sleep(2)  # the outage the test is about
            own_database.start()

        during = run_adds(client, names, seconds=5, mid_load=restart_database)
        wait_for(lambda: client.health().database, 10, "the service to reconnect")
        after = run_adds(client, names, seconds=1)
    assert "Unavailable" in during["errors"] or "ServerUnreachable" in during["errors"]
    assert during["slowest_failure"] < 15
    assert after["errors"] == [] and after["acknowledged"]
    assert_consistent(own_database.env)


def test_a_hung_database_holds_one_worker_so_ping_stays_answered(start_server, own_database):
    server = start_server(**own_database.env, THRIFT_WORKERS="2", MYSQL_READ_TIMEOUT="1")
    with server.client(retries=0, timeout=1) as liveness, server.client(pool_size=6, retries=0) as loaded:
        liveness.add("hung", 1)
        stop = threading.Event()
        callers = [threading.Thread(target=keep_reading, args=(loaded, stop)) for _ in range(6)]
        os.kill(own_database.process.pid, signal.SIGSTOP)
        try:
            for caller in callers:
                caller.start()
            wait_for(lambda: "database unavailable" in server.log(), 30, "the server to notice the hung database")
            wait_for(lambda: _pings(liveness), 15, "a worker to be free")
            for _ in range(8):  # over several read timeouts: a liveness probe's view, 1 s each, no retry
                assert liveness.ping() == "pong"
                stop.wait(0.4)
        finally:
            os.kill(own_database.process.pid, signal.SIGCONT)
            stop.set()
            for caller in callers:
                caller.join()
        wait_for(lambda: _answers(liveness, "hung"), 20, "the database to answer")


def test_with_the_defaults_a_write_to_a_hung_database_is_unavailable_within_the_clients_timeout(
    start_server, own_database
):
    # The server's worst case, MYSQL_READ_TIMEOUT to find the pooled session hung and then MYSQL_CONNECT_TIMEOUT
    # to find a new one cannot connect (5 + 3 s), is within the client's timeout (10 s): the client hears the
    # server's Unavailable rather than its own timeout.
    server = start_server(**own_database.env)
    with server.client(retries=0) as client:
        client.add("hung write", 1)
        time.sleep(db.PING_INTERVAL_SECONDS + 0.1)  # the next checkout pings the session first: the worst case
        stop_whole(own_database.process.pid)
        try:
            with pytest.raises(Unavailable):
                client.add("hung write", 1)
        finally:
            os.kill(own_database.process.pid, signal.SIGCONT)
        wait_for(lambda: _answers(client, "hung write"), 20, "the database to answer, the write not applied")


@pytest.mark.parametrize("pool", ["persistent", "pooled"])
def test_with_the_defaults_a_write_whose_database_hangs_mid_transaction_is_unavailable_within_the_clients_timeout(
    own_database, pool
):
    # The statement waits MYSQL_READ_TIMEOUT, DBUtils' reconnect MYSQL_CONNECT_TIMEOUT (5 + 3 s); no second and
    # third reconnect (the rollback of a transaction the lost session took with it, PooledDB's reset of the
    # connection given back) may take the answer past the client's 10 s.
    database = own_database.env
    sql(database, "CREATE TABLE hung (id INT PRIMARY KEY, total INT)")
    sql(database, "INSERT INTO hung VALUES (1, 0)")
    db.init_pool(load(ServerSettings, db.CONFIG_FILE, {**database, "SERVICE_NAME": "things", "DB_POOL": pool}))

    def add_then_hang(cursor) -> None:
        cursor.execute("UPDATE hung SET total = total + 1 WHERE id = 1")
        stop_whole(own_database.process.pid)
        cursor.execute("SELECT total FROM hung WHERE id = 1")

    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailable):
            db.run_transaction(add_then_hang)
        took = time.monotonic() - started
    finally:
        os.kill(own_database.process.pid, signal.SIGCONT)
        db.close_pool()
    assert took < 10
    assert sql(database, "SELECT total FROM hung") == [(0,)]


def stop_whole(pid: int) -> None:
    """SIGSTOP, and wait until every thread has stopped: a thread already woken may yet answer one statement,
    and a COMMIT sent after it would then be applied once the database resumes (its outcome unknown, as with
    any COMMIT whose reply is lost), which is not the hang this file's tests are about."""
    os.kill(pid, signal.SIGSTOP)
    tasks = Path(f"/proc/{pid}/task")
    wait_for(
        lambda: all(stat.read_text().rsplit(")", 1)[1].split()[0] == "T" for stat in tasks.glob("*/stat")),
        10,
        "every thread of the database to stop",
    )


def keep_reading(client, stop: threading.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(Unavailable, ServerUnreachable):
            client.get("hung")
        stop.wait(0.01)


def _pings(client) -> bool:
    try:
        return client.ping() == "pong"
    except ServerUnreachable:
        return False


def test_lock_wait_timeouts_are_retried_then_unavailable(start_server, own_database):
    # With the defaults: MySQL's own lock wait (50 s) would outlast the read timeout (5 s) and the client's (10 s);
    # the server's sessions share half the read timeout among a transaction's 4 attempts.
    server = start_server(**own_database.env, LOG_CLIENT_ERRORS_PER_10S="2")
    with server.client(retries=0) as client:
        client.add("contended", 1)
        blocker = MySQLdb.connect(**connect_kwargs(own_database.env))
        blocker.cursor().execute("SELECT total FROM counters WHERE name = 'contended' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(Unavailable):
            client.add("contended", 1)
        assert time.monotonic() - started >= 4  # four attempts of one second each, within the client's timeout
        # A lock that did not clear is not an outage: while another call waits on it, others are served.
        waiting = threading.Thread(target=add_unless_unavailable, args=(client, "contended"))
        waiting.start()
        wait_for(lambda: statement_waits(own_database.env, "INSERT INTO counters"), 10, "a call to wait on the lock")
        with server.client(retries=0) as other:
            assert other.add("not contended", 1).total == 1
        blocker.rollback()  # the waiting call goes through
        waiting.join()
        assert client.add("contended", 1).total == 3
    assert server.stop() == 0  # which writes what the cap held back
    assert "database unavailable" not in server.log()
    assert re.search(r" \d+ more transactions re-run not logged", server.log())  # a line per re-run, capped


def test_a_deadline_that_ends_a_retry_of_unavailable_raises_unavailable_not_a_timeout(start_server, own_database):
    server = start_server(**own_database.env, DB_DEADLOCK_RETRIES="0", MYSQL_READ_TIMEOUT="2")  # lock waits of 1 s
    with server.client(deadline=1.8, timeout=1.8) as client:  # the second try starts with under 0.9 s left
        client.add("locked", 1)
        blocker = MySQLdb.connect(**connect_kwargs(own_database.env))
        blocker.cursor().execute("SELECT total FROM counters WHERE name = 'locked' FOR UPDATE")
        try:
            with pytest.raises(Unavailable):  # the server's answer, not the second try the deadline cut short
                client.add("locked", 1)
        finally:
            blocker.close()


def test_a_session_left_idle_mid_transaction_gives_its_locks_back_within_six_read_timeouts(start_server, own_database):
    database = own_database.env  # only this test's sessions on it
    server = start_server(**database, MYSQL_READ_TIMEOUT="1")  # the database closes the kit's sessions idle for 6 s
    with server.client(retries=0) as client:
        client.add("orphaned", 1)
        # A server cut off by the network mid-transaction: its session idles, the row locked, nobody to close it.
        cut_off = MySQLdb.connect(**connect_arguments(database, MYSQL_READ_TIMEOUT="1"))
        cut_off.cursor().execute("START TRANSACTION")
        cut_off.cursor().execute("SELECT total FROM counters WHERE name = 'orphaned' FOR UPDATE")
        wait_for(lambda: sessions(database) == 0, 15, "idle sessions to be closed")  # the pool's, idle as long, too
        assert client.add("orphaned", 1).total == 2  # the lock given back; a new pooled session, and no error
    assert "database unavailable" not in server.log()


def sessions(database: dict[str, str]) -> int:
    """The database's sessions on this test's database, but the one asking."""
    query = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = %s AND ID != CONNECTION_ID()"
    return sql(database, query, (database["MYSQL_DATABASE"],))[0][0]


def add_unless_unavailable(client, name: str) -> None:
    with contextlib.suppress(Unavailable):
        client.add(name, 1)


def test_migrations_are_recorded_once_each_kit_first(start_server, database_server):
    database = database_server.database("kit_migrations")
    start_server(**database).stop()
    start_server(**database)  # a second start applies nothing again
    assert sql(database, "SELECT name FROM kit_schema_migrations") == [("001_write_requests.sql",)]
    assert sql(database, "SELECT name FROM schema_migrations") == [("001_counters.sql",)]


def test_a_server_whose_user_may_not_create_tables_starts_on_a_schema_another_user_migrated(
    start_server, database_server
):
    # Migrations run by an administrator (db.py migrate), the server as a user that only reads and writes.
    database = database_server.database("kit_migrated_by_another")
    assert start_server(**database).stop() == 0
    user = f"writer_{database_server.run}"
    sql(database, f"CREATE USER '{user}'@'%' IDENTIFIED BY 'writer-pw'")
    try:
        sql(database, f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database['MYSQL_DATABASE']}`.* TO '{user}'@'%'")
        server = start_server(**{**database, "MYSQL_USER": user, "MYSQL_PASSWORD": "writer-pw"})
        with server.client() as client:
            assert client.add("migrated by another", 2).total == 2
        assert server.stop() == 0
    finally:
        sql(database, f"DROP USER '{user}'@'%'")


def connect_arguments(database: dict[str, str], **settings: str) -> dict:
    return mysql.connect_arguments(load(ServerSettings, db.CONFIG_FILE, {**database, **settings}))


def test_a_new_file_numbered_below_one_that_has_run_is_refused(database_server, tmp_path):
    database = database_server.database("kit_late_migration")
    (tmp_path / "002_stock.sql").write_text("CREATE TABLE stock (id INT);\n")
    migrate.apply(connect_arguments(database), tmp_path, 5)
    (tmp_path / "001_late.sql").write_text("CREATE TABLE late (id INT);\n")  # from a branch merged later
    with pytest.raises(migrate.MigrationError, match=r"001_late\.sql is numbered below 002_stock\.sql, which has run"):
        migrate.apply(connect_arguments(database), tmp_path, 5)
    assert ("late",) not in sql(database, "SHOW TABLES")


def test_a_service_without_a_migrations_directory_gets_the_kits_alone(database_server, tmp_path):
    database = database_server.database("kit_no_migrations")
    assert migrate.apply(connect_arguments(database), tmp_path / "migrations", 5) == ["001_write_requests.sql"]


@pytest.mark.parametrize(
    ("files", "refusal"),
    [
        (["001_first.sql", "002-second.sql"], "002-second.sql: a migration is named NNN_description.sql"),
        (["001_first.sql", "002_second.SQL"], "002_second.SQL: a migration is named NNN_description.sql"),
        (["20261127120000_timestamped.sql"], "numbered past 2147483647"),
        (
            ["001_first.sql", "002_second.sql", "002_other.sql"],
            r"002_other.sql and 002_second.sql in \S+ share",
        ),
    ],
    ids=["dash", "upper-case", "past an INT", "one number twice"],
)
def test_migration_files_misnamed_or_sharing_a_number_are_refused_before_any_runs(
    files, refusal, database_server, tmp_path
):
    database = database_server.database("kit_bad_migrations")
    for name in files:
        (tmp_path / name).write_text(f"CREATE TABLE t{len(name)}_{name[:3]} (id INT);\n")
    with pytest.raises(migrate.MigrationError, match=refusal):
        migrate.apply(connect_arguments(database), tmp_path, 5)
    assert sql(database, "SHOW TABLES") == []


def test_a_new_file_under_the_number_of_an_applied_one_is_refused(database_server, tmp_path):
    database = database_server.database("kit_renumbered_migrations")
    (tmp_path / "001_stock.sql").write_text("CREATE TABLE stock (id INT);\n")
    (tmp_path / "002_add-index.v2.sql").write_text("CREATE INDEX by_id ON stock (id);\n")
    for not_a_migration in ("README.md", "003_notes", "001_stock.sql~", ".#001_stock.sql"):  # text, draft, editor
        (tmp_path / not_a_migration).write_text("ignored\n")
    applied = migrate.apply(connect_arguments(database), tmp_path, 5)
    assert applied == ["001_write_requests.sql", "001_stock.sql", "002_add-index.v2.sql"]
    (tmp_path / "001_stock.sql").rename(tmp_path / "001_movements.sql")
    with pytest.raises(
        migrate.MigrationError,
        match=r"migration 1 was applied as 001_stock\.sql, but the file numbered 1 is 001_movements\.sql",
    ):
        migrate.apply(connect_arguments(database), tmp_path, 5)


STOCK = "-- What is in stock.\nCREATE TABLE stock (\n  id INT,\n  units INT DEFAULT 0 -- none, until counted\n);\n"


def test_an_applied_file_edited_is_refused_naming_it_before_any_file_runs(database_server, tmp_path):
    # "I'll just fix 001": skipped as applied, the database would no longer match the files, with nobody told.
    database = database_server.database("kit_edited_migration")
    (tmp_path / "001_stock.sql").write_text(STOCK)
    migrate.apply(connect_arguments(database), tmp_path, 5)
    (tmp_path / "001_stock.sql").write_text(STOCK.replace("units INT DEFAULT 0", "units BIGINT DEFAULT 0"))
    (tmp_path / "002_prices.sql").write_text("CREATE TABLE prices (id INT);\n")
    result = run_python("-c", MIGRATE_FROM, str(tmp_path), **database)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "error: cannot migrate: 001_stock.sql was edited after it was applied (its statements differ from those"
        " that ran): a migration that has run is never edited, so undo the edit and put the change in a new numbered"
        " file (on a scratch or development database, drop the database and create it again; if this database"
        " already matches the edited file, forget the old digest (UPDATE schema_migrations SET statements_sha256 ="
        " NULL WHERE version = 1) and migrate again)\n"
    )
    assert ("prices",) not in sql(database, "SHOW TABLES")
    assert sql(
        database,
        "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE()"
        " AND TABLE_NAME = 'stock' AND COLUMN_NAME = 'units'",
    ) == [("int",)]


def test_an_applied_file_whose_comments_whitespace_or_line_endings_changed_is_not_refused(database_server, tmp_path):
    # A comment's typo fixed, the file re-indented, or checked out on Windows (git's autocrlf): nothing that runs.
    database = database_server.database("kit_reworded_migration")
    (tmp_path / "001_stock.sql").write_text(STOCK)
    migrate.apply(connect_arguments(database), tmp_path, 5)
    reworded = (
        "-- What is in stock, by item.\n\nCREATE TABLE stock (\n    id INT,\n    units INT DEFAULT 0  # none yet\n);\n"
    )
    (tmp_path / "001_stock.sql").write_bytes(reworded.replace("\n", "\r\n").encode())
    (tmp_path / "002_prices.sql").write_text("CREATE TABLE prices (id INT);\n")
    assert migrate.apply(connect_arguments(database), tmp_path, 5) == ["002_prices.sql"]


@pytest.mark.parametrize("which", ["001_stock.sql", "002_prices.sql"], ids=["applied", "new"])
def test_a_migration_that_is_not_utf_8_is_refused_in_one_line_not_a_traceback(database_server, tmp_path, which):
    # Saved in Latin-1 by a Windows editor, say: an applied file is read now too, for its digest.
    database = database_server.database("kit_latin1_migration")
    (tmp_path / "001_stock.sql").write_text(STOCK)
    migrate.apply(connect_arguments(database), tmp_path, 5)
    (tmp_path / "002_prices.sql").write_text("CREATE TABLE prices (id INT);\n")
    (tmp_path / which).write_bytes(b"-- caf\xe9\n" + (tmp_path / which).read_bytes())
    result = run_python("-c", MIGRATE_FROM, str(tmp_path), **database)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"error: cannot migrate: {which} is not UTF-8 text (byte 0xe9): save it as UTF-8\n"
    assert sql(database, "SELECT name FROM schema_migrations") == [("001_stock.sql",)]


def test_a_migration_saved_with_a_byte_order_mark_runs_as_the_mysql_client_runs_it(database_server, tmp_path):
    # Windows editors save UTF-8 with a BOM; the mysql client skips it, and the database refuses it as SQL.
    database = database_server.database("kit_bom_migration")
    (tmp_path / "001_stock.sql").write_bytes(b"\xef\xbb\xbf" + STOCK.encode())
    assert migrate.apply(connect_arguments(database), tmp_path, 5)[-1] == "001_stock.sql"  # after the kit's
    (tmp_path / "001_stock.sql").write_text(STOCK)  # the BOM taken out again: nothing that runs changed
    assert migrate.apply(connect_arguments(database), tmp_path, 5) == []


def test_a_migration_that_cannot_be_read_is_refused_naming_it(database_server, tmp_path):
    database = database_server.database("kit_unreadable_migration")
    (tmp_path / "001_stock.sql").mkdir()  # read as a file this user may not read is: an OSError (root reads any)
    with pytest.raises(migrate.MigrationError, match=r"^cannot read .*001_stock\.sql: Is a directory$"):
        migrate.apply(connect_arguments(database), tmp_path, 5)


def migrated_by_an_older_kit(database_server, name: str, migrations: Path) -> dict[str, str]:
    """A database `migrations` (001_stock.sql) were applied to by the kit before digests."""
    database = database_server.database(name)
    (migrations / "001_stock.sql").write_text(STOCK)
    migrate.apply(connect_arguments(database), migrations, 5)
    for table in ("kit_schema_migrations", "schema_migrations"):  # as the kit before digests left them
        sql(database, f"ALTER TABLE {table} DROP COLUMN statements_sha256")
    return database


def test_a_tracking_table_an_older_kit_created_gains_the_digest_column_then_guards(database_server, tmp_path):
    database = migrated_by_an_older_kit(database_server, "kit_digestless_migrations", tmp_path)
    assert migrate.apply(connect_arguments(database), tmp_path, 5) == []
    # A server of the older kit, still running in a rolling update, applies a new file as it always did.
    sql(database, "CREATE TABLE prices (id INT)")
    sql(database, "INSERT INTO schema_migrations (version, name, applied_at_ms) VALUES (2, '002_prices.sql', 1)")
    (tmp_path / "002_prices.sql").write_text("CREATE TABLE prices (id INT);\n")
    assert migrate.apply(connect_arguments(database), tmp_path, 5) == []
    digestless = (
        "SELECT name FROM kit_schema_migrations WHERE statements_sha256 IS NULL"
        " UNION ALL SELECT name FROM schema_migrations WHERE statements_sha256 IS NULL"
    )
    assert sql(database, digestless) == []  # each recorded, trusted, at the first run that could
    (tmp_path / "002_prices.sql").write_text("CREATE TABLE prices (id BIGINT);\n")
    with pytest.raises(migrate.MigrationError, match=r"^002_prices\.sql was edited after it was applied"):
        migrate.apply(connect_arguments(database), tmp_path, 5)


def test_a_user_that_may_not_add_the_digest_column_is_told_who_must_migrate(database_server, tmp_path):
    # Servers that only read and write, on a schema an administrator migrated with the kit before digests.
    database = migrated_by_an_older_kit(database_server, "kit_digestless_read_write", tmp_path)
    user = f"digestless_{database_server.run}"
    sql(database, f"CREATE USER '{user}'@'%' IDENTIFIED BY 'writer-pw'")
    try:
        sql(database, f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database['MYSQL_DATABASE']}`.* TO '{user}'@'%'")
        with pytest.raises(migrate.MigrationError) as refused:
            migrate.apply(connect_arguments(database, MYSQL_USER=user, MYSQL_PASSWORD="writer-pw"), tmp_path, 5)
    finally:
        sql(database, f"DROP USER '{user}'@'%'")
    assert str(refused.value).startswith(
        "kit_schema_migrations lacks the statements_sha256 column this kit records, and this user may not add it"
    )
    assert str(refused.value).endswith(
        ": run `python db.py migrate` once as a user who may alter kit_schema_migrations"
    )


def test_a_failing_statement_is_named_with_its_file_and_what_it_left_applied(database_server, tmp_path):
    database = database_server.database("kit_failing_migration")
    (tmp_path / "001_stock.sql").write_text("CREATE TABLE stock (id INT);\nCREATE TABLE stock (id INT);\n")
    with pytest.raises(migrate.MigrationError) as refused:
        migrate.apply(connect_arguments(database), tmp_path, 5)
    assert str(refused.value) == (
        "001_stock.sql, statement 2: Table 'stock' already exists (statement 1 was applied, and the file stays"
        " recorded as begun: undo that, or take it out of the file, and forget the record (DELETE FROM"
        " schema_migrations WHERE version = 1); then migrate again)"
    )
    assert sql(database, "SELECT name, applied_at_ms FROM schema_migrations") == [("001_stock.sql", 0)]


def _five_in_stock_then(database: dict[str, str], tmp_path: Path, second_file: str) -> None:
    """Migrate a stock table of one row of 5 units; then add 002_double.sql, holding `second_file`."""
    (tmp_path / "001_stock.sql").write_text(
        "CREATE TABLE stock (id INT, units INT);\nINSERT INTO stock VALUES (1, 5);\n"
    )
    migrate.apply(connect_arguments(database), tmp_path, 5)
    (tmp_path / "002_double.sql").write_text(second_file)


def test_a_file_that_failed_past_its_first_statement_is_not_run_again_by_the_next_start(database_server, tmp_path):
    # A restart policy (compose's, a Deployment's) starts the server again at once: a file run again would
    # repeat the statements before the one that failed.
    database = database_server.database("kit_migration_failed_mid_file")
    _five_in_stock_then(database, tmp_path, "UPDATE stock SET units = units * 2;\nALTER TABLE nowhere ADD x INT;\n")
    for _ in range(2):
        with pytest.raises(migrate.MigrationError):
            migrate.apply(connect_arguments(database), tmp_path, 5)
    assert sql(database, "SELECT units FROM stock") == [(10,)]  # doubled once
    result = run_python("-c", MIGRATE_FROM, str(tmp_path), **database)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: cannot migrate: 002_double.sql did not finish when it last ran")


def test_a_lock_waited_for_past_a_files_first_statement_leaves_it_to_be_finished_by_hand(database_server, tmp_path):
    # A lock wait at the first statement is tried again by the next start; past it, that would repeat the first.
    database = database_server.database("kit_migration_lock_mid_file")
    _five_in_stock_then(database, tmp_path, "UPDATE stock SET units = units * 2;\nALTER TABLE stock ADD x INT;\n")
    reader = MySQLdb.connect(**connect_kwargs(database))
    try:
        reader.cursor().execute("BEGIN")
        reader.cursor().execute("SELECT id FROM stock")  # holds the table's metadata lock until it ends
        with pytest.raises(migrate.MigrationError) as refused:
            migrate.apply(connect_arguments(database), tmp_path, 5)
    finally:
        reader.close()
    assert str(refused.value).startswith("002_double.sql, statement 2: Lock wait timeout exceeded")
    with pytest.raises(migrate.MigrationError, match=r"002_double\.sql did not finish when it last ran"):
        migrate.apply(connect_arguments(database), tmp_path, 5)
    assert sql(database, "SELECT units FROM stock") == [(10,)]  # doubled once


def test_a_migration_behind_a_long_transaction_fails_instead_of_queueing_the_tables_queries(database_server, tmp_path):
    database = database_server.database("kit_migration_behind_a_transaction")
    (tmp_path / "001_stock.sql").write_text("CREATE TABLE stock (id INT);\n")
    migrate.apply(connect_arguments(database), tmp_path, 5)
    reader = MySQLdb.connect(**connect_kwargs(database))
    reader.cursor().execute("BEGIN")
    reader.cursor().execute("SELECT id FROM stock")  # holds the table's metadata lock until it ends
    (tmp_path / "002_stock_name.sql").write_text("ALTER TABLE stock ADD COLUMN name VARCHAR(64);\n")
    try:
        with pytest.raises(MySQLdb.OperationalError) as waited:  # db.py migrate: status 1, the next start retries
            migrate.apply(connect_arguments(database), tmp_path, 5)
    finally:
        reader.close()
    assert waited.value.args[0] == 1205  # lock wait timeout, after the defaults' 1 s
    assert migrate.apply(connect_arguments(database), tmp_path, 5) == ["002_stock_name.sql"]


def test_a_trigger_whose_body_holds_semicolons_runs_between_delimiter_lines(database_server, tmp_path):
    database = database_server.database("kit_trigger_migration")
    (tmp_path / "001_stock.sql").write_text(
        "CREATE TABLE stock (\n  id INT,\n  delimiter CHAR(1),\n  doubled INT\n);\n"  # a column, not a command
        "DELIMITER //\n"
        "CREATE TRIGGER stock_doubled BEFORE INSERT ON stock FOR EACH ROW\n"
        "BEGIN\n"
        "  SET NEW.doubled = NEW.id * 2;\n"
        "END//\n"
        "DELIMITER ;\n"
        "INSERT INTO stock (id) VALUES (21);\n"
    )
    migrate.apply(connect_arguments(database), tmp_path, 5)
    assert sql(database, "SELECT delimiter, doubled FROM stock") == [(None, 42)]


def _migrating_asleep_mid_file(database: dict[str, str], tmp_path: Path) -> subprocess.Popen:
    """db.py migrate running tmp_path/migrations' one file, two tables apart, asleep between them."""
    migrations = tmp_path / "migrations"
    migrations.mkdir()
    (migrations / "001_two_tables.sql").write_text(
        "CREATE TABLE first (id INT);\nDO SLEEP(30);\nCREATE TABLE second (id INT);\n"
    )
    migrating = subprocess.Popen(
        [sys.executable, "-c", MIGRATE_FROM, str(migrations)],
        cwd=ROOT,
        env={**PROJECT_ENV, **database},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: statement_waits(database, "DO SLEEP"), 30, "the migration's second statement")
    except BaseException:
        migrating.kill()
        raise
    return migrating


def test_sigterm_during_a_migration_file_waits_until_the_file_is_applied_and_recorded(database_server, tmp_path):
    # MySQL commits each DDL statement at once: a file cut short would fail every later start.
    database = database_server.database("kit_migration_sigterm")
    migrating = _migrating_asleep_mid_file(database, tmp_path)
    try:
        migrating.send_signal(signal.SIGTERM)
        sql(database, "KILL QUERY %s", (sql(database, SLEEPING)[0][0],))  # SLEEP ends early, and the file goes on
        migrating.communicate(timeout=30)
        assert migrating.returncode == -signal.SIGTERM  # stopped by the signal, once the file was whole
    finally:
        migrating.kill()
    assert sql(database, "SHOW TABLES LIKE 'second'") == [("second",)]
    assert sql(database, "SELECT name FROM schema_migrations") == [("001_two_tables.sql",)]


def test_a_migration_killed_mid_file_is_refused_by_the_next_run_with_the_way_to_go_on(database_server, tmp_path):
    # SIGKILL (docker stop past its grace period, the OOM killer) cannot be held as SIGTERM is: a file's first
    # statements stay applied without its record, and running it again could repeat what it did.
    database = database_server.database("kit_migration_sigkill")
    migrating = _migrating_asleep_mid_file(database, tmp_path)
    try:
        migrating.kill()
        migrating.communicate(timeout=30)
        assert migrating.returncode == -signal.SIGKILL
    finally:
        migrating.kill()
    for (session,) in sql(database, SLEEPING):  # the database has not noticed yet that its client is gone
        sql(database, "KILL %s", (session,))
    result = run_python("-c", MIGRATE_FROM, str(tmp_path / "migrations"), **database)
    assert result.returncode == 2
    assert result.stderr == (
        "error: cannot migrate: 001_two_tables.sql did not finish when it last ran (a statement past its first"
        " failed, or the process was killed or lost the database mid-file), so any of its statements may have taken"
        " effect: compare the schema with the file, then finish it by hand and record it (UPDATE schema_migrations"
        " SET applied_at_ms = UNIX_TIMESTAMP() * 1000 WHERE version = 1), or undo what it did and forget it (DELETE"
        " FROM schema_migrations WHERE version = 1), and migrate again\n"
    )
    assert sql(database, "SHOW TABLES LIKE 'second'") == []  # nothing more ran
    sql(database, "CREATE TABLE second (id INT)")  # finished by hand, and recorded, as the line says
    sql(database, "UPDATE schema_migrations SET applied_at_ms = UNIX_TIMESTAMP() * 1000 WHERE version = 1")
    assert run_python("-c", MIGRATE_FROM, str(tmp_path / "migrations"), **database).stdout == "schema is up to date\n"


# `python db.py migrate` with the migrations of the directory given as its argument.
MIGRATE_FROM = "import sys, pathlib, db; db.MIGRATIONS_DIR = pathlib.Path(sys.argv[1]); sys.exit(db.main(['migrate']))"
SLEEPING = "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'DO SLEEP%%' AND DB = DATABASE()"


def test_migrate_while_another_process_holds_the_lock_is_one_line_and_status_1(database_server):
    database = database_server.database("kit_migration_lock")
    holder = MySQLdb.connect(**connect_kwargs(database))
    holder.cursor().execute("SELECT GET_LOCK(CONCAT('migrations:', DATABASE()), 10)")
    try:
        result = run_python("db.py", "migrate", **database, DB_MIGRATION_LOCK_TIMEOUT="1")
    finally:
        holder.close()
    assert result.returncode == 1
    where = f"{database['MYSQL_DATABASE']} on {database['MYSQL_HOST']}:{database['MYSQL_PORT']}"
    assert result.stderr == f"error: cannot migrate {where}: another process held the migration lock for 1 s\n"


def test_the_migration_lock_is_waited_for_longer_than_the_read_timeout(database_server, tmp_path):
    database = database_server.database("kit_migration_lock_wait")
    holder = MySQLdb.connect(**connect_kwargs(database))
    holder.cursor().execute("SELECT GET_LOCK(CONCAT('migrations:', DATABASE()), 10)")
    (tmp_path / "001_stock.sql").write_text("CREATE TABLE stock (id INT);\n")
    migrating = threading.Thread(
        target=lambda: applied.extend(migrate.apply(connect_arguments(database, MYSQL_READ_TIMEOUT="1"), tmp_path, 30))
    )
    applied: list[str] = []
    migrating.start()
    try:
        waited = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT GET_LOCK%%' AND TIME >= 2"
        wait_for(lambda: sql(database, waited)[0][0] == 1, 20, "the migration to wait 2 s for the lock")
    finally:
        holder.close()  # which releases the lock
    migrating.join(timeout=20)
    assert applied == ["001_write_requests.sql", "001_stock.sql"]


@pytest.fixture
def thing_writes(database_server, request):
    """IdempotentWrites in this process on a database of its own (named after the test), add_thing(method,
    request_id, arguments), which inserts a thing once per request_id, and the IdempotentWrites."""
    database = database_server.database(request.node.name[:40])
    sql(database, "CREATE TABLE IF NOT EXISTS things (id BIGINT AUTO_INCREMENT PRIMARY KEY)")
    settings = load(ServerSettings, db.CONFIG_FILE, {**database, "SERVICE_NAME": "things"})
    db.migrate(settings)  # the kit's write record (and the example's tables, unused here)
    db.init_pool(settings)
    writes = IdempotentWrites(db.run_transaction)

    def insert(cursor) -> int:
        cursor.execute("INSERT INTO things () VALUES ()")
        return cursor.lastrowid

    def add_thing(method: str, request_id: str, arguments: tuple) -> int:
        return writes.apply(method, request_id, arguments, insert, lambda cursor, thing_id: thing_id)

    try:
        yield database, add_thing, writes
    finally:
        db.close_pool()


def test_a_write_whose_arguments_hold_a_struct_and_a_set_is_applied_once(thing_writes):
    database, add_thing, _ = thing_writes
    Counter = counters_thrift.Counter
    first = add_thing("add", "with-a-struct", (Counter(id=1, name="n", total=2), {"a", "b", "c"}))
    assert add_thing("add", "with-a-struct", (Counter(id=1, name="n", total=2), {"c", "b", "a"})) == first
    with pytest.raises(RequestIdReused):
        add_thing("add", "with-a-struct", (Counter(id=1, name="n", total=3), {"a", "b", "c"}))
    assert sql(database, "SELECT COUNT(*) FROM things") == [(1,)]


def test_a_write_method_name_of_255_characters_is_recorded(thing_writes):
    database, add_thing, _ = thing_writes
    method = "m" * 255
    first = add_thing(method, "long-name", ())
    assert add_thing(method, "long-name", ()) == first
    assert sql(database, "SELECT method FROM write_requests") == [(method,)]


@pytest.mark.parametrize(
    "returned, error, message",
    [
        ("SKU-1", TypeError, "add_item: apply\\(\\) must return the integer id of the row it wrote, not 'SKU-1'"),
        (2**63, ValueError, "add_item: apply\\(\\) returned 9223372036854775808, outside write_requests.result_id's"),
    ],
    ids=["a text key", "an id past BIGINT"],
)
def test_a_write_that_returns_no_id_the_record_holds_is_named_and_rolled_back(thing_writes, returned, error, message):
    database, _, writes = thing_writes

    def insert(cursor) -> object:
        cursor.execute("INSERT INTO things () VALUES ()")
        return returned

    with pytest.raises(error, match=message):
        writes.apply("add_item", "unrecordable", (), insert, lambda cursor, key: key)
    assert sql(database, "SELECT COUNT(*) FROM things") == [(0,)]


def test_a_checkout_refused_for_a_failed_reconnect_gives_its_pooled_connection_back(database_server):
    # DB_POOL=pooled with one connection: a checkout whose reconnect fails (the session killed, the password
    # rotated) is refused, and must hand its connection back, or every other thread waits for it forever.
    database = database_server.database("kit_refused_checkout")
    sql(database, "CREATE USER 'refused_checkout'@'%' IDENTIFIED BY 'first-pw'")
    sql(database, f"GRANT ALL ON `{database['MYSQL_DATABASE']}`.* TO 'refused_checkout'@'%'")
    pooled = {"MYSQL_USER": "refused_checkout", "MYSQL_PASSWORD": "first-pw", "DB_POOL": "pooled", "DB_POOL_SIZE": "1"}
    db.init_pool(load(ServerSettings, db.CONFIG_FILE, {**database, **pooled, "SERVICE_NAME": "things"}))
    try:
        assert db.read("SELECT 1") == [(1,)]
        sessions = "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'refused_checkout'"
        for (session,) in sql(database, sessions):
            sql(database, f"KILL CONNECTION {session}")
        sql(database, "ALTER USER 'refused_checkout'@'%' IDENTIFIED BY 'rotated-pw'")
        time.sleep(db.PING_INTERVAL_SECONDS + 0.1)  # the checkout pings the killed session, and cannot reconnect
        with pytest.raises(DatabaseUnavailable, match="Access denied"):
            db.read("SELECT 1")
        sql(database, "ALTER USER 'refused_checkout'@'%' IDENTIFIED BY 'first-pw'")
        read_elsewhere: list = []  # by another worker, while this one stays idle, as a worker does between calls
        other = threading.Thread(target=lambda: read_elsewhere.append(db.read("SELECT 2")), daemon=True)
        other.start()
        other.join(10)
        assert read_elsewhere == [[(2,)]], "the refused checkout kept the pool's only connection"
    finally:
        db.close_pool()
        sql(database, "DROP USER 'refused_checkout'@'%'")


def test_a_migration_whose_session_is_killed_mid_file_says_why_it_stopped(database_server, tmp_path):
    # A named lock ends with its session: releasing it on a lost one must not hide why the file stopped.
    database = database_server.database("kit_migration_session_killed")
    migrating = _migrating_asleep_mid_file(database, tmp_path)
    try:
        for (session,) in sql(database, SLEEPING):
            sql(database, "KILL %s", (session,))
        _, stderr = migrating.communicate(timeout=30)
    finally:
        migrating.kill()
    assert migrating.returncode == 1
    assert stderr.startswith("error: cannot migrate "), stderr
    assert "gone away" not in stderr, stderr  # what the lock's release met, not what stopped the file
