"""Logs and metrics as an operator sees them: exact counts after known calls, names from SERVICE_NAME."""

import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time

import pytest
from thriftpy2.protocol import TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException, TMessageType

from counters import counters_thrift
from helpers.metrics import sample, scrape
from helpers.mysql import sql
from helpers.processes import all_children, child_pids, run_python
from helpers.wire import call_bytes, exchange, framed, message_header
from servicekit.client import new_request_id
from servicekit.observability import MAX_SCRAPES, SCRAPE_TIMEOUT_SECONDS, RequestObserver
from servicekit.wire import FRAME_HEADER
from tools.throwaway_db import free_port, wait_for

base = counters_thrift.base
# The tests that read a request's DEBUG line: on a busy machine the first write can pass the 500 ms default
# and be logged at WARNING, as slow, instead.
NEVER_SLOW = "3600000"


def known_calls(client) -> str:
    """3 pings, 1 add, 2 missing counters, 1 bad add; returns the add's request id."""
    for _ in range(3):
        client.ping()
    request_id = new_request_id()
    client.add("observed", 1, request_id)
    for _ in range(2):
        with pytest.raises(counters_thrift.NotFound):
            client.get("never added")
    with pytest.raises(base.InvalidArgument):
        client.add("observed", 0)
    return request_id


def assert_known_counts(before: dict[str, float], after: dict[str, float]) -> None:
    """known_calls() happened between the two scrapes, and nothing else."""

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("counters_requests_total", method="ping", outcome="ok") == 3
    assert grew("counters_requests_total", method="add", outcome="ok") == 1
    assert grew("counters_requests_total", method="get", outcome="NotFound") == 2
    assert grew("counters_requests_total", method="add", outcome="InvalidArgument") == 1
    assert grew("counters_request_duration_seconds_count", method="ping") == 3
    assert sample(after, "counters_build_info", version="0.1.0") == 1


def test_a_stock_client_speaking_unframed_compact_is_counted_and_logged_the_same(start_server):
    metrics_port = free_port()
    server = start_server(METRICS_PORT=str(metrics_port), LOG_LEVEL="DEBUG", SLOW_REQUEST_MS=NEVER_SLOW)
    before = scrape(metrics_port)
    client = make_client(
        counters_thrift.Counters, "127.0.0.1", server.port, proto_factory=TCompactProtocolFactory(), timeout=10_000
    )
    try:
        known_calls(client)
    finally:
        client.close()
    assert_known_counts(before, scrape(metrics_port))
    assert re.search(
        r" DEBUG counters\.requests .* add ok in [0-9.]+ ms from 127\.0\.0\.1:\d+, request_id \w", server.log()
    )


def test_metrics_count_exactly_what_was_called_and_json_logs_carry_request_fields(start_server):
    metrics_port = free_port()
    server = start_server(
        METRICS_PORT=str(metrics_port), LOG_FORMAT="json", LOG_LEVEL="DEBUG", SLOW_REQUEST_MS=NEVER_SLOW
    )
    before = scrape(metrics_port)
    with server.client(retries=0) as client:
        request_id = known_calls(client)
        for gauge in ("counters_open_connections", "counters_db_connections"):  # sampled once a second
            wait_for(lambda gauge=gauge: sample(scrape(metrics_port), gauge) >= 1, 5, gauge)
    samples = scrape(metrics_port)
    assert_known_counts(before, samples)
    assert sample(samples, "counters_db_connections_opened_total") >= 1
    assert sample(samples, "counters_db_connections") <= 8  # at most one per worker
    assert sample(samples, "counters_busy_workers") == 0
    assert samples["process_resident_memory_bytes"] > 10_000_000  # one process: the standard series, no pid
    assert server.stop() == 0

    lines = [json.loads(line) for line in server.log().splitlines()]
    (add,) = [entry for entry in lines if entry.get("method") == "add" and entry["outcome"] == "ok"]
    request_fields = {"method", "peer", "duration_ms", "outcome", "request_id"}
    assert set(add) == {"time", "level", "logger", "message", "pid", *request_fields}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", add["time"])
    assert (add["level"], add["logger"]) == ("DEBUG", "counters.requests")
    assert (add["method"], add["outcome"], add["request_id"]) == ("add", "ok", request_id)
    assert add["peer"].startswith("127.0.0.1:") and 0 < add["duration_ms"] < 10_000
    assert add["message"].startswith("add ok in ")
    (ping,) = [entry for entry in lines if entry.get("method") == "ping"][:1]
    assert "request_id" not in ping  # reads carry none
    assert {entry["logger"].split(".")[0] for entry in lines} == {"counters"}  # every logger under the service


def test_metrics_add_up_across_server_processes_and_their_files_go_with_the_server(start_server, tmp_path):
    metrics_port = free_port()
    server = start_server(METRICS_PORT=str(metrics_port), THRIFT_PROCESSES="2", TMPDIR=str(tmp_path))
    wait_for(lambda: "metrics on" in server.log(), 10, "the metrics endpoint")
    before = scrape(metrics_port)
    with server.client(pool_size=4, retries=0) as client:
        known_calls(client)
    assert_known_counts(before, scrape(metrics_port))
    assert list(tmp_path.glob("counters-metrics-*"))  # where the processes' files were
    assert server.stop() == 0
    assert not list(tmp_path.glob("counters-metrics-*"))


def by_pid(samples: dict[str, float], name: str) -> dict[int, float]:
    """One process metric's value for each server process."""
    pattern = re.compile(rf'{name}\{{pid="(\d+)"\}}')
    return {int(match.group(1)): value for key, value in samples.items() if (match := pattern.fullmatch(key))}


def test_each_server_process_shows_its_memory_and_descriptors_by_pid_until_it_dies(start_server, tmp_path):
    metrics_port = free_port()
    server = start_server(METRICS_PORT=str(metrics_port), THRIFT_PROCESSES="2", TMPDIR=str(tmp_path))
    wait_for(lambda: "metrics on" in server.log(), 10, "the metrics endpoint")
    parent = server.process.pid
    children = all_children(parent, 2)
    samples = scrape(metrics_port)
    memory, open_fds, max_fds = (
        by_pid(samples, name) for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds")
    )
    assert set(memory) == set(open_fds) == set(max_fds) == {parent, *children}
    assert set(by_pid(samples, "process_cpu_seconds_total")) == {parent, *children}
    for child in children:
        assert memory[child] > 10_000_000
        assert 0 < open_fds[child] < max_fds[child]

    with contextlib.ExitStack() as stack:  # 20 connections, each answered: held by one child or the other
        for _ in range(20):
            connection = stack.enter_context(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            connection.sendall(framed(call_bytes(counters_thrift.Counters, "ping")))
            assert connection.recv(1024)
        held = by_pid(scrape(metrics_port), "process_open_fds")
        assert sum(held[child] for child in children) >= sum(open_fds[child] for child in children) + 20

    dead = min(children)
    os.kill(dead, signal.SIGKILL)
    wait_for(lambda: len(child_pids(parent) - {dead}) == 2, 10, "a replacement server process")
    live = {parent, *child_pids(parent)}
    wait_for(lambda: set(by_pid(scrape(metrics_port), "process_open_fds")) == live, 10, f"the series of {live}")
    assert not [key for key in scrape(metrics_port) if f'pid="{dead}"' in key]
    assert server.stop() == 0


def test_json_logs_say_which_server_process_wrote_each_line(start_server):
    # As text lines do ([pid]): with several processes, the same line from two of them is otherwise one line twice.
    server = start_server(THRIFT_PROCESSES="2", LOG_FORMAT="json")
    children = all_children(server.process.pid, 2)
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines()]
    assert {entry["pid"] for entry in lines if entry["message"].startswith("draining: ")} == children
    assert [entry["pid"] for entry in lines if entry["message"] == "stopped"] == [server.process.pid]


def test_unknown_method_names_share_one_metric_series(start_server):
    metrics_port = free_port()
    server = start_server(METRICS_PORT=str(metrics_port))
    names = [f"probe_{n}".encode() for n in range(20)]
    for name in names:
        exchange(server.port, framed(message_header(name) + b"\x00"))
        exchange(server.port, framed(message_header(name, message_type=TMessageType.ONEWAY) + b"\x00"))
    samples = scrape(metrics_port)
    assert sample(samples, "counters_requests_total", method="unknown", outcome="unknown_method") == len(names)
    assert sample(samples, "counters_requests_total", method="unknown", outcome="one_way_dropped") == len(names)
    assert not [key for key in samples if "probe_" in key]  # a client cannot add series
    assert server.stop() == 0


def test_connections_the_server_closes_are_counted_by_reason_whatever_the_log_level(start_server):
    metrics_port = free_port()
    timeouts = {"THRIFT_READ_TIMEOUT": "2", "THRIFT_IDLE_TIMEOUT": "2"}
    server = start_server(METRICS_PORT=str(metrics_port), THRIFT_MAX_CONNECTIONS="2", LOG_LEVEL="ERROR", **timeouts)
    wait_for(
        lambda: sample(scrape(metrics_port), "counters_open_connections") == 0, 10, "the start-up check to hang up"
    )
    address = ("127.0.0.1", server.port)
    with socket.create_connection(address, timeout=5) as partial, socket.create_connection(address, timeout=5) as idle:
        partial.sendall(b"\x00\x00\x00\x40\x80\x01")  # 6 bytes of a 68-byte message
        idle.sendall(framed(call_bytes(counters_thrift.Counters, "ping")))
        assert idle.recv(1024)  # answered: both are open (accepted in order)
        with socket.create_connection(address, timeout=5) as refused:
            assert refused.recv(1) == b""  # over THRIFT_MAX_CONNECTIONS: closed at once
        assert partial.recv(1) == idle.recv(1) == b""  # closed at the read and idle timeouts
    for _ in range(2):
        assert exchange(server.port, b"\x13\x37\x13\x37")[0] == b""  # garbage
    # A call declaring 70,000 bytes: answered from its header, then closed (the rest is not sent, so no reset
    # can overtake the reply).
    assert exchange(server.port, FRAME_HEADER.pack(70_000) + message_header(b"ping"))[0]

    expected = {
        "over_max_connections": 1,
        "read_timeout": 1,
        "idle_timeout": 1,
        "malformed_message": 2,
        "over_max_message_bytes": 1,
    }

    def counted() -> dict[str, float]:
        samples = scrape(metrics_port)
        return {reason: sample(samples, "counters_connections_closed_total", reason=reason) for reason in expected}

    wait_for(lambda: counted() == expected, 10, f"the closes to be counted as {expected}")
    assert server.stop() == 0
    assert "closing" not in server.log()  # at LOG_LEVEL=ERROR, counted but not logged


def test_a_client_error_line_quotes_at_most_300_characters_of_what_the_client_sent(start_server):
    server = start_server()
    exchange(server.port, framed(message_header(b"A" * 60_000) + b"\x00"))  # an unknown method of 60,000 bytes
    assert server.stop() == 0
    (line,) = [line for line in server.log().splitlines() if "unknown method" in line]
    # "call from 127.0.0.1:PORT of unknown method 'AAA...'": the client named, the method name cut
    assert re.search(r"call from 127\.0\.0\.1:\d+ of unknown method 'A+\.\.\. \(600[0-9]{2} characters\)$", line)
    assert len(line) < 500


# A method name with a line of its own, and what splits a line for readers that honour Unicode's line breaks.
FORGED = "x\n2026-01-01 00:00:00,000 ERROR counters.db [1] FORGED\u2028{}\x85y"


def test_json_logs_stay_one_object_a_line_whatever_a_client_sends(start_server):
    server = start_server(LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    exchange(server.port, framed(message_header(b"caf\xe9") + b"\x00"))
    exchange(server.port, framed(message_header(FORGED.encode()) + b"\x00"))
    client = make_client(counters_thrift.Counters, "127.0.0.1", server.port, timeout=5000)
    with pytest.raises(counters_thrift.base.InvalidArgument):
        client.add("x", 1, "\u202e" * 10_000)  # a request_id of 30 kB
    client.close()
    assert server.stop() == 0
    log = server.log()
    assert "\u2028" not in log and "\x85" not in log and "\u202e" not in log
    lines = [json.loads(line) for line in log.splitlines()]  # each line one object, no "Logging error"
    assert any("'caf\\\\xe9'" in entry["message"] for entry in lines)  # the WARNING quotes the name
    requests = [entry for entry in lines if entry["logger"] == "counters.requests"]
    assert {entry["method"] for entry in requests if entry["outcome"] == "unknown_method"} == {"unknown"}
    assert [entry["request_id"] for entry in requests if entry["method"] == "add"] == ["(invalid)"]


def test_a_request_id_the_idl_types_otherwise_is_logged_as_invalid_not_a_crash(caplog):
    observe = RequestObserver(None, slow_request_ms=0)  # every request slow: each one logged
    with caplog.at_level(logging.WARNING):
        observe("add", "127.0.0.1:5", "ok", 0.001, 12345)  # an IDL may declare an i64 request_id
    assert caplog.records[-1].request_id == "(invalid)"


def test_text_logs_keep_a_client_from_writing_lines_of_its_own(start_server):
    server = start_server(LOG_LEVEL="DEBUG")
    exchange(server.port, framed(message_header(FORGED.encode()) + b"\x00"))
    assert server.stop() == 0
    assert not [line for line in server.log().split("\n") if "FORGED" in line and not line.startswith("20")]
    assert not [line for line in server.log().split("\n") if line.startswith("2026-01-01")]


def test_idle_connections_to_the_metrics_port_take_a_few_threads_and_not_the_thrift_port(start_server):
    metrics_port = free_port()
    server = start_server(METRICS_PORT=str(metrics_port), THRIFT_WORKERS="2")
    wait_for(lambda: "metrics on" in server.log(), 10, "the metrics endpoint")
    # The engine's first worker answers the readiness ping while the others may still be starting.
    threads = thread_count(server.process.pid) + 2
    idle = [socket.create_connection(("127.0.0.1", metrics_port)) for _ in range(40)]
    try:
        wait_for(lambda: sum(map(closed_by_server, idle)) == 40 - MAX_SCRAPES, 10, "the connections past the bound")
        assert thread_count(server.process.pid) <= threads + MAX_SCRAPES
        with server.client(retries=0) as client:
            assert client.ping() == "pong"
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: scraped(metrics_port), 10, "a scrape once they are gone")


def test_scrapers_that_trickle_their_requests_give_their_places_back_within_the_timeout(start_server):
    metrics_port = free_port()
    server = start_server(METRICS_PORT=str(metrics_port))
    wait_for(lambda: "metrics on" in server.log(), 10, "the metrics endpoint")
    slow = [socket.create_connection(("127.0.0.1", metrics_port)) for _ in range(MAX_SCRAPES)]
    stop = threading.Event()

    def trickle() -> None:  # a header byte each second: no read waits long enough to time out
        while not stop.wait(1.0):
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"x")

    trickling = threading.Thread(target=trickle)
    trickling.start()
    try:
        wait_for(lambda: not scraped(metrics_port), 5, "the slow scrapers to hold every place")
        wait_for(lambda: scraped(metrics_port), SCRAPE_TIMEOUT_SECONDS + 10, "a place for Prometheus")
    finally:
        stop.set()
        trickling.join()
        for sock in slow:
            sock.close()


def thread_count(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("Threads:")).split()[1])


def scraped(port: int) -> bool:
    try:
        return sample(scrape(port), "counters_build_info", version="0.1.0") == 1
    except OSError:  # closed at once: the bound is still taken
        return False


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False


def test_slow_requests_are_logged_as_warnings_and_only_they(start_server):
    server = start_server(SLOW_REQUEST_MS="200", LOG_LEVEL="WARNING")
    with server.client() as client:
        client.ping()
        client.call("hold", 0.3)
    assert server.stop() == 0
    log = server.log()
    assert re.search(r" WARNING counters.requests \[\d+\] hold ok in [\d.]+ ms \(slow\) from 127\.0\.0\.1:\d+\n", log)
    assert "ping ok" not in log


def test_health_reports_a_hung_database_within_seconds(start_server, own_database):
    server = start_server(**own_database.env)
    with server.client(timeout=10, retries=0) as client:
        assert client.health().database is True
        own_database.process.send_signal(signal.SIGSTOP)  # the database hangs without closing anything
        try:
            started = time.monotonic()
            assert client.health().database is False
            assert time.monotonic() - started < 5  # the check's own 2 s timeout, not MYSQL_READ_TIMEOUT
        finally:
            own_database.process.send_signal(signal.SIGCONT)
        wait_for(lambda: client.health().database, 10, "the database to answer again")


def test_logs_at_debug_never_show_the_database_password(start_server, database):
    sql(database, "CREATE USER IF NOT EXISTS 'pw_user'@'%' IDENTIFIED BY 'Hunter2-secret'")
    sql(database, f"GRANT ALL ON `{database['MYSQL_DATABASE']}`.* TO 'pw_user'@'%'")
    server = start_server(MYSQL_USER="pw_user", MYSQL_PASSWORD="Hunter2-secret", LOG_LEVEL="DEBUG")
    with server.client() as client:
        client.add("secret keeper", 1)
    assert server.stop() == 0
    assert "Hunter2-secret" not in server.log()


def test_metrics_on_the_thrift_port_stop_the_server_with_one_line_and_status_2(start_server):
    port = free_port()
    server = start_server(port=port, METRICS_PORT=str(port), ready=False)
    assert server.process.wait(30) == 2
    assert server.log().splitlines()[-1] == f"error: METRICS_PORT and THRIFT_PORT are both {port}: give each its own"


def test_a_taken_metrics_port_stops_the_server_with_one_line_and_status_1(start_server):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        server = start_server(METRICS_PORT=str(port), ready=False)
        assert server.process.wait(30) == 1
    last_line = server.log().splitlines()[-1]
    assert last_line == f"error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in server.log()


def test_client_errors_past_the_budget_are_summed_up_in_one_line(start_server):
    server = start_server(LOG_CLIENT_ERRORS_PER_10S="3")
    for _ in range(8):
        reply, _ = exchange(server.port, b"\x13\x37\x13\x37")  # garbage: closed with a WARNING
        assert reply == b""
    with server.client(retries=0) as client:
        for _ in range(8):  # as a database that refuses every query would have each request fail
            with pytest.raises(TApplicationException):
                client.call("fail")
    assert server.stop() == 0  # the held count is written at exit at the latest
    log = server.log()
    assert log.count("Traceback") == 3
    assert re.search(
        r" ERROR \S+ \[\d+\] 5 more unexpected RuntimeErrors in fail not logged .*; the last: unexpected error in fail",
        log,
    )
    assert len(re.findall(r" WARNING \S+ \[\d+\] closing \S+: malformed message", log)) == 3
    assert re.search(
        r" WARNING \S+ \[\d+\] 5 more malformed messages not logged \(LOG_CLIENT_ERRORS_PER_10S\);"
        r" the last: closing 127\.0\.0\.1:\d+: malformed message \(MalformedMessage: frame of",
        log,
    )


FLAPPING = """
from servicekit import mysql, observability
observability.configure_logging("counters", "INFO", "text", 4)
outage = mysql.Outage()
for _ in range(50):  # sessions that reach the database and sessions that cannot, in turn
    outage.failed("cannot connect: Access denied")
    outage.answered()
"""


def test_a_database_that_fails_every_other_call_logs_a_few_lines_and_a_count_not_one_pair_per_call():
    result = run_python("-c", FLAPPING)
    lines = result.stderr.splitlines()
    assert len(lines) == 5, result.stderr  # 4 lines, then the count when the process exits
    assert "database unavailable: cannot connect: Access denied" in lines[0]
    assert "database answers again" in lines[1]
    assert "96 more database outages begun or ended not logged (LOG_CLIENT_ERRORS_PER_10S)" in lines[4]
