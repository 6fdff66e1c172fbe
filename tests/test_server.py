"""The server process: errors, draining, pooling, timeouts, configuration."""

import os
import signal
import socket
import struct
import threading
import time
from pathlib import Path

import MySQLdb
import pytest
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TCyFramedTransportFactory

from client import ServerUnreachable, ledger_thrift
from conftest import ROOT, connect_kwargs, run_python, sql, wait_for


def connections_opened(database) -> int:
    return int(sql(database, "SHOW GLOBAL STATUS LIKE 'Connections'")[0][1])


def test_unexpected_handler_error_is_internal_error_and_connection_survives(ledger, client, database):
    account = client.create_account("schema drift").id
    # One bare thriftpy2 connection (no pool, no retries): the same socket must
    # carry the failed call and the next one.
    bare = make_client(
        ledger_thrift.Ledger,
        "127.0.0.1",
        ledger.port,
        trans_factory=TCyFramedTransportFactory(),
        proto_factory=TCyBinaryProtocolFactory(),
        timeout=10_000,
    )
    sql(database, "ALTER TABLE accounts RENAME COLUMN owner TO owner_renamed")
    try:
        with pytest.raises(TApplicationException) as error:
            bare.get_account(account)
    finally:
        sql(database, "ALTER TABLE accounts RENAME COLUMN owner_renamed TO owner")
    assert error.value.type == TApplicationException.INTERNAL_ERROR
    assert bare.get_account(account).owner == "schema drift"
    bare.close()
    assert ledger.log().count("unexpected error in get_account") == 1


def test_sigterm_finishes_the_request_in_flight_then_exits_0(start_ledger, locked_account):
    account, lock_waits, release = locked_account
    server = start_ledger(THRIFT_DRAIN_TIMEOUT="20")
    results = []
    with server.client() as client:
        caller = threading.Thread(target=lambda: results.append(client.deposit(account, 5)))
        caller.start()
        wait_for(lock_waits, 10, "the deposit to wait for the row lock")
        server.process.send_signal(signal.SIGTERM)

        def refuses_connections() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", server.port)) != 0

        wait_for(refuses_connections, 10, "the server to stop accepting")
        assert caller.is_alive()
        release()
        caller.join(10)
    assert results and results[0].amount == 5
    assert server.process.wait(10) == 0
    assert "Traceback" not in server.log()


def test_drain_timeout_bounds_shutdown(start_ledger, locked_account):
    account, lock_waits, release = locked_account
    server = start_ledger(THRIFT_DRAIN_TIMEOUT="1")
    with server.client(timeout=30, retries=0) as client:
        errors = []

        def deposit() -> None:
            try:
                client.deposit(account, 5)
            except ServerUnreachable as error:
                errors.append(error)

        caller = threading.Thread(target=deposit)
        caller.start()
        wait_for(lock_waits, 10, "the deposit to wait for the row lock")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        assert time.monotonic() - started < 5
        caller.join(10)
        release()
    assert len(errors) == 1  # a clean error, not a hang


def test_connections_are_reused_across_1000_requests(start_ledger, database):
    workers = 4
    server = start_ledger(THRIFT_WORKERS=str(workers))
    with server.client() as setup:
        account = setup.create_account("reuse").id
    before = connections_opened(database)

    def call_250_times() -> None:
        with server.client() as own:
            for _ in range(125):
                own.get_account(account)
                own.deposit(account, 1)

    threads = [threading.Thread(target=call_250_times) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    new_connections = connections_opened(database) - before - 1  # minus the one that measured
    assert new_connections <= workers
    with server.client() as check:
        assert check.get_account(account).balance == 500


def test_idle_connections_do_not_hold_workers(start_ledger):
    server = start_ledger(THRIFT_WORKERS="2")
    idle = [server.client() for _ in range(50)]
    try:
        for client in idle:
            assert client.ping() == "pong"  # each now holds an open connection
        with server.client(timeout=2) as active:
            assert active.create_account("still served").owner == "still served"
    finally:
        for client in idle:
            client.close()


def test_idle_timeout_closes_quietly_and_client_reconnects(start_ledger):
    server = start_ledger(THRIFT_IDLE_TIMEOUT="0.5")
    with server.client(retries=0) as client:  # no retries: the stale connection must be noticed before use
        assert client.ping() == "pong"
        time.sleep(2)
        assert client.ping() == "pong"
    assert server.stop() == 0
    log = server.log()
    assert "ERROR" not in log and "Traceback" not in log


def test_timed_out_call_never_leaks_its_reply_into_the_next(ledger, locked_account):
    account, _, release = locked_account
    with ledger.client(timeout=0.5, retries=0, pool_size=1) as client:
        with pytest.raises(ServerUnreachable):
            client.deposit(account, 5)
        release()
        wait_for(lambda: client.get_account(account).balance == 5, 10, "the late deposit to commit")
        assert isinstance(client.get_account(account), ledger_thrift.Account)


def test_oversized_message_closes_only_that_connection(ledger, client):
    with socket.create_connection(("127.0.0.1", ledger.port), timeout=5) as hostile:
        hostile.sendall(struct.pack("!i", 2**31 - 1) + b"x" * 100)
        assert hostile.recv(1) == b""  # closed without reading the body
    assert client.ping() == "pong"
    assert "frame of 2147483647 bytes" in ledger.log()


def test_database_outage_is_unavailable_then_recovers(start_ledger, own_database):
    server = start_ledger(**own_database.env, MYSQL_CONNECT_TIMEOUT="2")
    with server.client() as client:
        account = client.create_account("outage").id
        client.deposit(account, 100)
        own_database.stop()
        with pytest.raises(ledger_thrift.Unavailable):
            client.get_account(account)
        with pytest.raises(ledger_thrift.Unavailable):
            client.deposit(account, 1, "retry-after-outage")
        assert client.health().database is False
        cli = run_python("client.py", "--servers", f"127.0.0.1:{server.port}", "get-account", str(account))
        assert cli.returncode == 7
        own_database.start()
        wait_for(lambda: client.health().database, 10, "the service to reconnect")
        assert client.deposit(account, 1, "retry-after-outage").amount == 1
        assert client.get_account(account).balance == 101


def test_lock_wait_timeouts_are_retried_then_unavailable(start_ledger, own_database):
    sql(own_database.env, "SET GLOBAL innodb_lock_wait_timeout = 1")
    server = start_ledger(**own_database.env, DB_DEADLOCK_RETRIES="2")
    with server.client(retries=0) as client:
        account = client.create_account("contended").id
        blocker = MySQLdb.connect(**connect_kwargs(own_database.env))
        blocker.cursor().execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (account,))
        started = time.monotonic()
        with pytest.raises(ledger_thrift.Unavailable):
            client.deposit(account, 1)
        assert time.monotonic() - started >= 3  # three attempts of one second each
        blocker.rollback()
        assert client.deposit(account, 1).amount == 1
    assert server.log().count("retrying transaction after error 1205") == 2


@pytest.mark.parametrize(
    ("variable", "value"),
    [("THRIFT_PORT", "http"), ("THRIFT_WORKERS", "0"), ("DB_POOL", "magic"), ("MYSQL_READ_TIMEOUT", "-1")],
)
def test_bad_setting_stops_with_one_line_and_status_2(variable, value):
    result = run_python("server.py", **{variable: value})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and variable in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_database_password_is_one_line_without_the_password(database):
    result = run_python("server.py", **{**database, "MYSQL_PASSWORD": "s3cret-Pa55"})
    assert result.returncode == 1
    assert "cannot migrate" in result.stdout + result.stderr
    assert "s3cret-Pa55" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_migrate_command_applies_each_migration_once(ledger, database):
    result = run_python("db.py", "migrate", **database)
    assert (result.returncode, result.stdout.strip()) == (0, "schema is up to date")
    applied = sql(database, "SELECT name FROM schema_migrations ORDER BY version")
    assert applied == [(path.name,) for path in sorted((ROOT / "migrations").glob("[0-9]*.sql"))]


def test_pooled_db_mode_serves_too(start_ledger):
    server = start_ledger(DB_POOL="pooled", DB_POOL_SIZE="2")
    with server.client() as client:
        account = client.create_account("pooled").id
        client.deposit(account, 3)
        assert client.get_account(account).balance == 3


def child_pids(pid: int) -> set[int]:
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_several_processes_share_the_port_replace_a_dead_one_and_drain_together(start_ledger):
    server = start_ledger(THRIFT_PROCESSES="2")
    parent = server.process.pid
    original = child_pids(parent)
    assert len(original) == 2
    with server.client(pool_size=4) as client:
        account = client.create_account("two processes").id
        os.kill(min(original), signal.SIGKILL)
        wait_for(lambda: child_pids(parent) - original, 10, "a replacement process")
        for _ in range(20):
            client.deposit(account, 1)
        assert client.get_account(account).balance == 20
    survivors = child_pids(parent)
    assert server.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in survivors)


def test_server_processes_exit_when_their_parent_is_killed(start_ledger):
    server = start_ledger(THRIFT_PROCESSES="2")
    children = child_pids(server.process.pid)
    server.stop(signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "orphaned processes to exit")
