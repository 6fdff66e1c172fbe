"""The server engine on real processes: errors, draining, pooling, timeouts, processes, start-up."""

import logging
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TCyFramedTransportFactory, TTransportException

from counters import CountersHandler, counters_thrift
from helpers.load import connections_to, run_threads
from helpers.mysql import connections_opened, statement_waits
from helpers.processes import PROJECT_ENV, ROOT, all_children, child_pids, run_python
from helpers.wire import call_bytes, framed, reply_names, unread_bytes
from servicekit.client import ServerUnreachable
from servicekit.processor import GuardedProcessor
from servicekit.thread_pool_server import TThreadPoolServer
from tools.throwaway_db import free_port, wait_for

Counters = counters_thrift.Counters


def bare_client(port: int):
    """One plain thriftpy2 connection (no pool, no retries): the same socket carries every call."""
    return make_client(
        Counters,
        "127.0.0.1",
        port,
        trans_factory=TCyFramedTransportFactory(),
        proto_factory=TCyBinaryProtocolFactory(),
        timeout=10_000,
    )


def test_unexpected_handler_error_is_internal_error_and_the_connection_survives(server):
    bare = bare_client(server.port)
    with pytest.raises(TApplicationException) as error:
        bare.fail()
    assert error.value.type == TApplicationException.INTERNAL_ERROR
    assert bare.ping() == "pong"
    bare.close()
    wait_for(lambda: "unexpected error in fail" in server.log(), 5, "the traceback")
    assert server.log().count("RuntimeError: a bug") == 1


def test_an_undeclared_idl_exception_is_internal_error_and_a_logged_contract_bug(server):
    bare = bare_client(server.port)
    with pytest.raises(TApplicationException) as error:
        bare.undeclared()
    assert error.value.type == TApplicationException.INTERNAL_ERROR
    assert bare.ping() == "pong"
    bare.close()
    message = "undeclared raised NotFound, which service.thrift does not declare for undeclared"
    wait_for(lambda: message in server.log(), 5, "the contract error")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_sigterm_refuses_new_connections_finishes_the_request_in_flight_then_exits_0(start_server, database, processes):
    server = start_server(THRIFT_DRAIN_TIMEOUT="20", THRIFT_PROCESSES=processes)
    with server.client(retries=0) as client:
        caller = threading.Thread(target=client.call, args=("hold", 2.0))
        caller.start()
        wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the request to be running")
        server.process.send_signal(signal.SIGTERM)

        def refuses_connections() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", server.port)) != 0

        wait_for(refuses_connections, 10, "the server to stop accepting")
        assert caller.is_alive()
        caller.join(10)
    assert server.process.wait(10) == 0
    assert "draining: 1 requests running; waiting up to 20s for them" in server.log()
    assert "Traceback" not in server.log()


def test_a_call_on_an_idle_connection_while_the_server_drains_is_closed_at_once_not_held(start_server, database):
    # Its client retries another server at once, rather than wait for the drain to end (THRIFT_DRAIN_TIMEOUT).
    server = start_server(THRIFT_DRAIN_TIMEOUT="20")
    idle = bare_client(server.port)
    assert idle.ping() == "pong"
    with server.client(retries=0) as client:
        caller = threading.Thread(target=client.call, args=("hold", 3.0))
        caller.start()
        wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the request to be running")
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining: 1 requests running" in server.log(), 10, "the drain to begin")
        with pytest.raises(TTransportException):
            idle.ping()
        assert caller.is_alive()
        caller.join(10)
    idle.close()
    assert server.process.wait(10) == 0


def test_drain_timeout_bounds_shutdown(start_server, database):
    server = start_server(THRIFT_DRAIN_TIMEOUT="1")
    errors = []
    with server.client(timeout=30, retries=0) as client:

        def hold() -> None:
            try:
                client.call("hold", 30.0)
            except ServerUnreachable as error:
                errors.append(error)

        caller = threading.Thread(target=hold)
        caller.start()
        wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the request to be running")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        assert time.monotonic() - started < 5
        caller.join(10)
    assert len(errors) == 1  # a clean error, not a hang
    assert "drain timeout: 1 requests still running are abandoned after 1s (THRIFT_DRAIN_TIMEOUT)" in server.log()


def hold_then_a_large_reply(port: int, database: dict[str, str]) -> socket.socket:
    """A connection whose hold(1 s) runs, with a call pipelined behind it whose 10 MB reply no socket buffer holds
    whole: the server sends it as the client reads."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(framed(call_bytes(Counters, "hold", 1.0)) + framed(call_bytes(Counters, "repeat", "x" * 100, 100_000)))
    wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the request to be running")
    return sock


def test_a_reply_the_client_takes_as_it_reads_reaches_it_whole_during_the_drain(start_server, database):
    server = start_server(THRIFT_DRAIN_TIMEOUT="20")
    with hold_then_a_large_reply(server.port, database) as sock:
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: unread_bytes(sock) > 50_000, 10, "the large reply to begin")
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    assert reply_names(received) == ["hold", "repeat"]
    assert received.endswith(b"x" * 10_000_000 + b"\0")  # the whole string, then the end of the result: not cut short
    assert server.process.wait(10) == 0


def test_a_client_that_never_reads_its_reply_holds_the_drain_no_longer_than_the_drain_timeout(start_server):
    server = start_server(THRIFT_DRAIN_TIMEOUT="2")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(framed(call_bytes(Counters, "repeat", "x" * 100, 100_000)))
        # Its reply begun, the rest waits on this client: no request runs when the drain begins, however late.
        wait_for(lambda: unread_bytes(sock) > 50_000, 10, "the large reply to begin")
        started = time.monotonic()
        assert server.stop(signal.SIGTERM, timeout=15) == 0
        assert time.monotonic() - started < 6
        # Told the reply was cut short, not sent the rest by the kernel after the server exited, then an end of file
        # a client could take for the end of the reply.
        with pytest.raises(ConnectionResetError):
            while sock.recv(1 << 20):
                pass
    cut = "drain timeout: 1 replies their clients did not take are cut short after 2s (THRIFT_DRAIN_TIMEOUT)"
    assert cut in server.log()


def test_a_stop_asked_for_before_serving_begins_is_not_lost(caplog):
    """SIGTERM at start-up: close() runs before serve() has made its wake-up socket."""
    handler = CountersHandler()
    processor = GuardedProcessor(Counters, handler, version="1", is_serving=lambda: True, database_answers=lambda: True)
    server = TThreadPoolServer(processor, "127.0.0.1", free_port(), 2, 60, 10, 5, 65536, 100, 2**20)
    server.listen()
    server.close()
    serving = threading.Thread(target=server.serve)
    with caplog.at_level(logging.WARNING):
        serving.start()
        serving.join(30)
    assert not serving.is_alive()
    assert "drain timeout" not in caplog.text  # its workers were woken, not abandoned


def test_database_connections_are_reused_across_1000_requests(start_server, own_database):
    # A database server of its own: the count of connections it accepted is server-wide.
    database = own_database.env
    workers = 4
    server = start_server(**database, THRIFT_WORKERS=str(workers))
    with server.client() as setup:
        setup.add("reuse", 1)
    before = connections_opened(database)

    def call_250_times() -> None:
        with server.client() as own:
            for _ in range(125):
                own.get("reuse")
                own.add("reuse", 1)

    threads = [threading.Thread(target=call_250_times) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    new_connections = connections_opened(database) - before - 1  # minus the one that measured
    assert new_connections <= workers
    with server.client() as check:
        assert check.get("reuse").total == 501


def test_idle_connections_do_not_hold_workers(start_server):
    server = start_server(THRIFT_WORKERS="2")
    idle = [server.client() for _ in range(50)]
    try:
        for client in idle:
            assert client.ping() == "pong"  # each now holds an open connection
        with server.client(timeout=2) as active:
            assert active.add("still served", 1).total >= 1
    finally:
        for client in idle:
            client.close()


def test_clients_calling_in_a_loop_are_each_answered_without_a_stall(start_server):
    # A worker stays on a connection while the other waits; each hand-back must not strand a request
    # until the housekeeper's next round (1 s): every call must be answered within the 0.5 s timeout.
    server = start_server(THRIFT_WORKERS="2")
    with server.client(timeout=0.5, retries=0) as client:
        assert run_threads(3, lambda rng: client.ping(), seconds=3) == []


def test_a_new_client_is_served_while_one_worker_stays_and_the_other_runs_a_slow_call(start_server, database):
    # 2 workers: one stays on a client calling in a loop, the other runs a 2 s call. The staying
    # worker must give its connection back, or a new client waits for the slow call to end. The
    # loop runs in its own process, so that this one's GIL never pauses it long enough to end the stay.
    server = start_server(THRIFT_WORKERS="2")
    context = multiprocessing.get_context("fork")
    calling, stop = context.Event(), context.Event()
    looping = context.Process(target=call_in_a_loop, args=(server, calling, stop))
    looping.start()
    try:
        assert calling.wait(10)  # a worker stays on the looping client from its first call on
        with server.client(pool_size=1) as slow:
            holding = threading.Thread(target=slow.call, args=("hold", 2.0))
            holding.start()
            wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the slow call to start")
            with server.client(timeout=0.5, retries=0) as newcomer:
                assert newcomer.ping() == "pong"
            holding.join()
    finally:
        stop.set()
        looping.join(10)
    assert looping.exitcode == 0


def call_in_a_loop(server, calling, stop) -> None:
    with server.client(pool_size=1) as busy:
        while not stop.is_set():
            busy.ping()
            calling.set()


def test_idle_timeout_closes_quietly_and_the_client_reconnects(start_server):
    server = start_server(THRIFT_IDLE_TIMEOUT="0.5")
    with server.client(retries=0) as client:  # no retries: the stale connection must be noticed before use
        assert client.ping() == "pong"
        wait_for(lambda: connections_to(server.port) == 0, 5, "the server to close the idle connection")
        assert client.ping() == "pong"
    assert server.stop() == 0
    log = server.log()
    assert "ERROR" not in log and "Traceback" not in log


def test_a_timed_out_call_never_leaks_its_reply_into_the_next(server):
    with server.client(timeout=0.5, retries=0, pool_size=1) as client:
        with pytest.raises(ServerUnreachable):
            client.call("hold", 1.0)
        assert client.call("repeat", "next", 1) == "next"


def test_requests_sent_together_or_byte_by_byte_are_all_answered_in_order(server):
    calls = [call_bytes(Counters, "ping"), call_bytes(Counters, "get", "no such counter"), call_bytes(Counters, "ping")]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"".join(map(framed, calls)))  # all three arrive in one read
        for byte in framed(call_bytes(Counters, "ping")):  # and one more, a byte at a time
            sock.send(bytes([byte]))
            time.sleep(0.005)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert reply_names(received) == ["ping", "get", "ping", "ping"]


def test_calls_sent_all_at_once_are_all_answered_in_order_once_the_client_reads(server):
    # 20 MB of replies: the socket fills, the server keeps what it cannot send, then answers the rest.
    request = framed(call_bytes(Counters, "repeat", "x" * 100, 1000))  # a 100 kB reply
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request * 200 + framed(call_bytes(Counters, "ping")))
        wait_for(lambda: unread_bytes(sock) > 50_000, 10, "replies to pile up")
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(1 << 20):
            received += chunk
    assert reply_names(received) == ["repeat"] * 200 + ["ping"]


def test_pooled_db_mode_serves_too(start_server):
    server = start_server(DB_POOL="pooled", DB_POOL_SIZE="2")
    with server.client() as client:
        client.add("pooled", 3)
        assert client.get("pooled").total >= 3


def test_several_processes_share_the_port_replace_a_dead_one_and_drain_together(start_server):
    server = start_server(THRIFT_PROCESSES="2")
    parent = server.process.pid
    original = all_children(parent, 2)
    with server.client(pool_size=4) as client:
        first = client.add("two processes", 1).total
        os.kill(min(original), signal.SIGKILL)
        wait_for(lambda: child_pids(parent) - original, 10, "a replacement process")
        assert f"server process {min(original)} was killed by signal 9; starting another" in server.log()
        for _ in range(20):
            client.add("two processes", 1)
        assert client.get("two processes").total == first + 20
    survivors = child_pids(parent)
    assert server.stop() == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in survivors)


# A pre-fork parent forks a replacement child, and a stop is handled as fork() returns, before the child is counted:
# as when a SIGTERM comes mid-fork and the metrics server's thread, which does not hold it, takes it. Prints the
# child's exit status, or "still serving" if nothing stopped it.
STOP_AS_FORK_RETURNS = """
import os, sys, time
from counters import CountersHandler, counters_thrift
from servicekit import prefork
from servicekit.processor import GuardedProcessor
from servicekit.thread_pool_server import TThreadPoolServer

processor = GuardedProcessor(
    counters_thrift.Counters, CountersHandler(), version="1", is_serving=lambda: True, database_answers=lambda: True
)
server = TThreadPoolServer(processor, "127.0.0.1", 0, 2, 60, 10, 5, 65536, 100, 2**20)
server.listen()
supervisor = prefork._Supervisor(server, lambda: None, lambda pid: None)
fork = os.fork


def fork_then_stop():
    pid = fork()
    if pid:
        supervisor.stop()
    return pid


os.fork = fork_then_stop
supervisor.start_child()
(child,) = supervisor.children
give_up_at = time.monotonic() + 10
while (ended := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < give_up_at:
    time.sleep(0.05)
if ended[0] == 0:
    os.kill(child, 9)
print(os.waitstatus_to_exitcode(ended[1]) if ended[0] else "still serving")
"""


def test_a_stop_handled_as_a_child_is_forked_stops_that_child_too():
    # Else the parent waits for it forever: docker stop ends at the grace period's SIGKILL, not the drain.
    result = run_python("-c", STOP_AS_FORK_RETURNS, PYTHONPATH=f"{ROOT}:{ROOT / 'tests' / 'servicekit'}")
    assert (result.stdout, result.returncode) == ("0\n", 0), result.stderr


# A pre-fork parent of argv[4] children that fail: the Nth lives the Nth of argv[3]'s seconds (the last, once they
# run out), then raises. argv[1] and argv[2] stand in for RESTART_PAUSE_SECONDS and CRASH_LOOP_SECONDS.
FAILING_CHILDREN = """
import logging, os, sys, time
from counters import CountersHandler, counters_thrift
from servicekit import prefork
from servicekit.processor import GuardedProcessor
from servicekit.thread_pool_server import TThreadPoolServer

prefork.RESTART_PAUSE_SECONDS, prefork.CRASH_LOOP_SECONDS = float(sys.argv[1]), float(sys.argv[2])
lives = [float(seconds) for seconds in sys.argv[3].split(",")]
logging.basicConfig(level=logging.INFO, format="%(message)s")
processor = GuardedProcessor(
    counters_thrift.Counters, CountersHandler(), version="1", is_serving=lambda: True, database_answers=lambda: True
)
server = TThreadPoolServer(processor, "127.0.0.1", 0, 2, 60, 10, 5, 65536, 100, 2**20)
server.listen()
forks = 0
fork = os.fork


def counted_fork():
    global forks
    forks += 1
    return fork()


def fail():
    time.sleep(lives[min(forks, len(lives)) - 1])
    raise RuntimeError("failing as told")


os.fork = counted_fork
prefork.serve_in_processes(server, int(sys.argv[4]), fail)
"""


class FailingChildren:
    """FAILING_CHILDREN running, its log in `log_path`."""

    def __init__(self, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with log_path.open("w") as log:
            env = {**PROJECT_ENV, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests' / 'servicekit'}"}
            self.process = subprocess.Popen([sys.executable, "-c", FAILING_CHILDREN, *args], env=env, stderr=log)

    def pauses(self) -> list[str]:
        """The pauses logged before each restart."""
        return re.findall(r"; starting another in (\S+) s\n", self.log_path.read_text())

    def __enter__(self) -> "FailingChildren":
        return self

    def __exit__(self, *_: object) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def test_children_that_keep_dying_young_are_restarted_ever_later_until_one_lived_a_while(tmp_path):
    # 0.01 s doubling up to 1 s while children die within 1 s; the tenth lives 1 s, and the pause starts over.
    with FailingChildren(tmp_path / "log", "0.01", "1", "0,0,0,0,0,0,0,0,0,1,0", "1") as failing:
        wait_for(lambda: len(failing.pauses()) >= 11, 30, "eleven restarts")
        assert failing.stop() == 0
    assert failing.pauses()[:11] == ["0.01", "0.02", "0.04", "0.08", "0.16", "0.32", "0.64", "1", "1", "0.01", "0.02"]


def test_children_that_die_together_are_replaced_together_after_one_pause(tmp_path):
    # Not one pause after another (3 s, 6 s, 12 s): with every child dead, nothing would serve meanwhile.
    with FailingChildren(tmp_path / "log", "3", "60", "0", "3") as failing:
        wait_for(lambda: len(failing.pauses()) >= 6, 30, "two rounds of three restarts")
        assert failing.stop() == 0
    first, second = failing.pauses()[:3], failing.pauses()[3:6]
    assert first[0] == "3" and all(float(pause) <= 3 for pause in first), first
    assert second[0] == "6" and all(float(pause) <= 6 for pause in second), second


def test_a_stop_during_the_pause_before_a_restart_ends_it(tmp_path):
    with FailingChildren(tmp_path / "log", "3600", "3600", "0", "1") as failing:
        wait_for(lambda: failing.pauses() == ["3600"], 30, "the first restart's pause")
        assert failing.stop() == 0  # at once, not in an hour: else a drain would outlast the orchestrator's grace
    assert failing.pauses() == ["3600"]  # and no child started since


def test_server_processes_exit_when_their_parent_is_killed(start_server):
    server = start_server(THRIFT_PROCESSES="2")
    children = all_children(server.process.pid, 2)
    server.stop(signal.SIGKILL)
    wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10, "orphaned processes to exit")


def test_a_thrift_host_that_does_not_resolve_is_named_in_one_line(start_server):
    server = start_server(THRIFT_HOST="no.such.host.invalid", METRICS_PORT=str(free_port()), ready=False)
    assert server.process.wait(30) == 2
    assert server.log().startswith("error: cannot resolve THRIFT_HOST 'no.such.host.invalid': ")
    assert server.log().count("\n") == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [("THRIFT_PORT", "http"), ("THRIFT_WORKERS", "0"), ("DB_POOL", "magic"), ("MYSQL_READ_TIMEOUT", "-1")],
)
def test_a_bad_setting_stops_with_one_line_and_status_2(variable, value):
    result = run_python("tests/servicekit/counters.py", SERVICE_NAME="counters", **{variable: value})
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and variable in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_database_password_is_one_line_without_the_password(database):
    env = {**database, "MYSQL_PASSWORD": "s3cret-Pa55", "SERVICE_NAME": "counters"}
    result = run_python("tests/servicekit/counters.py", **env)
    assert result.returncode == 1
    assert "cannot migrate" in result.stderr
    assert "s3cret-Pa55" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
