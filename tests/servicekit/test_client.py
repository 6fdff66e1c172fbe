"""PooledClient under load and failure: pool bounds, waiting, failover, closing; and its address parsing."""

import os
import re
import signal
import threading
import time

import pytest
from thriftpy2.thrift import TApplicationException

from counters import CountersClient, counters_thrift
from helpers.load import connections_to, run_threads
from helpers.mysql import statement_waits
from helpers.wire import FixedReplyServer, ResettingServer, SilentServer, framed, reply_bytes
from servicekit.client import RequestTooLarge, ServerUnreachable, UnexpectedReply, parse_servers
from tools.throwaway_db import wait_for

HOST = "127.0.0.1"  # where a test's own server listens: another address may have a server on the same port
# A name whose request is more than the kernel's socket buffers hold: its write fails if the server stops reading.
BEYOND_SOCKET_BUFFERS = "x" * 32 * 2**20


def test_the_pool_never_opens_more_than_its_size_under_32_threads(start_server):
    server = start_server()  # its own: this process's other clients may still hold connections to a shared one
    most_seen = 0
    with server.client(pool_size=4) as client:

        def call(rng) -> None:
            nonlocal most_seen
            client.get("pool") if rng.random() < 0.8 else client.add("pool", 1)
            most_seen = max(most_seen, connections_to(server.port, HOST))

        client.add("pool", 1)
        errors = run_threads(32, call, seconds=2)
    assert errors == []
    assert 1 < most_seen <= 4


def test_a_busy_pool_makes_a_caller_wait_then_give_up(server, database):
    with server.client(pool_size=1, acquire_timeout=0.5, retries=0) as client:
        holding = threading.Thread(target=client.call, args=("hold", 2.0))
        holding.start()
        wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the call to hold the only connection")
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="busy"):
            client.ping()
        assert 0.4 < time.monotonic() - started < 3
        holding.join(10)
        assert client.ping() == "pong"


def test_calls_spread_over_servers_and_survive_one_stopping(start_server):
    first, second = start_server(), start_server()
    with CountersClient(f"127.0.0.1:{first.port},127.0.0.1:{second.port}", pool_size=4) as client:
        client.add("two servers", 1)
        errors = run_threads(8, lambda rng: client.get("two servers"), seconds=0.5)
        assert errors == []
        assert connections_to(first.port) > 0 and connections_to(second.port) > 0
        assert first.stop() == 0
        errors = run_threads(8, lambda rng: client.add("two servers", 1), seconds=1)
        assert errors == []
        assert client.get("two servers").total > 1


def test_a_hung_server_is_skipped_after_a_call_to_it_times_out(start_server):
    healthy, hung = start_server(), start_server()
    servers = f"127.0.0.1:{healthy.port},127.0.0.1:{hung.port}"
    with CountersClient(servers, pool_size=8, timeout=0.5, deadline=30) as client:
        client.add("hung server", 1)
        run_threads(8, lambda rng: client.get("hung server"), seconds=0.5)  # connections to both
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            slow = []

            def timed_get(rng) -> None:
                started = time.monotonic()
                client.get("hung server")
                if time.monotonic() - started >= 0.5:
                    slow.append(time.monotonic() - started)

            errors = run_threads(8, timed_get, seconds=3)
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
    assert errors == []
    assert max(slow) < 2 * 0.5  # a call timed out on the hung server once at most, then went to the other
    assert len(slow) <= 8  # the connections open to it, and one each time it was tried again


def test_a_hung_server_takes_half_the_deadline_at_most_when_another_can_answer(start_server):
    healthy, hung = start_server(), start_server()
    servers = f"127.0.0.1:{healthy.port},127.0.0.1:{hung.port}"
    with CountersClient(servers, pool_size=2, timeout=2, deadline=2) as client:  # as client.py's --timeout 2
        run_threads(4, lambda rng: client.ping(), seconds=0.3)  # a connection to each
        os.kill(hung.process.pid, signal.SIGSTOP)
        try:
            took = []

            def timed_ping() -> None:
                started = time.monotonic()
                client.ping()
                took.append(time.monotonic() - started)

            errors = run_threads(2, lambda rng: timed_ping(), seconds=0.1)  # the first two calls take both
        finally:
            os.kill(hung.process.pid, signal.SIGCONT)
    assert errors == []
    assert 1 <= max(took) < 2  # timed out on the hung server after half the deadline, then answered by the other


def test_an_attempt_that_no_retry_can_follow_gets_all_the_time_left(start_server):
    servers = ",".join(f"127.0.0.1:{start_server().port}" for _ in range(2))
    with CountersClient(servers, retries=0, timeout=4, deadline=4) as client:
        client.call("hold", 2.5)  # past half the deadline, on either server


def test_a_reply_split_before_its_first_six_bytes_is_judged_all_the_same():
    other = FixedReplyServer(b"HT", b"TP/1.1 400 Bad Request\r\n\r\n", pause=0.2)  # read apart
    try:
        started = time.monotonic()
        with pytest.raises(UnexpectedReply, match=re.escape("a reply that starts b'HTTP/1.1 400'")):
            with CountersClient(f"127.0.0.1:{other.port}", deadline=30) as client:
                client.ping()
        assert time.monotonic() - started < 10  # not a 1.2 GB frame waited for until the deadline
    finally:
        other.close()


def test_a_reply_that_trickles_in_is_cut_off_at_the_timeout_of_the_whole_attempt():
    # A byte every 0.1 s: each read is quick, the reply takes 3 s. A slow path or a hostile server
    # would otherwise keep client.py running far past its --timeout.
    reply = framed(reply_bytes(counters_thrift.Counters, "ping", "pong"))
    trickle = FixedReplyServer(*(reply[i : i + 1] for i in range(len(reply))), pause=0.1)
    try:
        with pytest.raises(ServerUnreachable, match="timed out"):
            with CountersClient(f"127.0.0.1:{trickle.port}", timeout=1, deadline=1, retries=0) as client:
                client.ping()
    finally:
        trickle.close()


@pytest.mark.parametrize(
    "reply",
    [b"\x00\x00\x00\x05hello", b"\x7f\xff\xff\xf0", b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"],
    ids=["a frame that holds no Thrift message", "a frame of 2 GB declared", "an HTTP server"],
)
def test_a_server_of_something_else_is_one_error_at_once_not_a_traceback_or_a_wait(reply):
    other = FixedReplyServer(reply)
    try:
        started = time.monotonic()
        with pytest.raises(UnexpectedReply) as error, CountersClient(f"127.0.0.1:{other.port}", deadline=30) as client:
            client.ping()
        assert time.monotonic() - started < 10  # every address answered so: no retries until the deadline
    finally:
        other.close()
    assert error.value.sent and str(error.value).startswith(f"127.0.0.1:{other.port} (")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("pool_size", 0),
        ("retries", -1),
        ("timeout", 0),
        ("deadline", -1),
        ("connect_timeout", 0),
        ("acquire_timeout", -1),
        ("max_idle", -1),
        ("resolve_every", float("nan")),
    ],
)
def test_an_option_out_of_its_range_is_refused_naming_it(option, value):
    with pytest.raises(ValueError, match=f"^{option} must be"):
        CountersClient("127.0.0.1:9090", **{option: value})


@pytest.mark.parametrize(
    ("host", "options"),
    [
        ("localhost", {"deadline": float("inf")}),  # the resolver is waited for
        (HOST, {"deadline": float("inf"), "timeout": 1e300, "connect_timeout": 1e300, "acquire_timeout": 1e300}),
    ],
    ids=["by name", "every wait"],
)
def test_a_client_without_a_deadline_calls_as_any_other(server, host, options):
    with CountersClient(f"{host}:{server.port}", **options) as client:
        assert client.ping() == "pong"


def test_no_wait_for_a_free_connection_still_leaves_a_new_one_time_to_open(server):
    with server.client(acquire_timeout=0, retries=0) as client:
        assert client.ping() == "pong"


def test_max_idle_0_opens_a_connection_for_each_call(server):
    with server.client(max_idle=0, retries=0) as client:
        assert [client.ping() for _ in range(3)] == ["pong"] * 3


def test_closing_the_client_closes_every_connection_and_a_call_after_it_is_a_programming_error(start_server):
    server = start_server()  # its own, as above
    client = server.client(pool_size=4)
    run_threads(8, lambda rng: client.ping(), seconds=0.3)
    assert connections_to(server.port, HOST) > 0
    client.close()
    assert connections_to(server.port, HOST) == 0
    with pytest.raises(RuntimeError, match=r"^the client is closed$"):  # no outage: nothing to retry or report
        client.ping()


def test_a_request_over_the_servers_limit_is_refused_unsent_and_the_client_goes_on(server):
    with server.client(max_message_bytes=1024) as client:
        # Sent, the server would answer InvalidArgument (names are at most 64 characters).
        with pytest.raises(RequestTooLarge, match="is 2073 bytes, over the server's limit of 1024"):
            client.add("x" * 2000, 1)
        assert client.ping() == "pong"


def test_by_default_a_request_over_the_servers_default_limit_is_refused_unsent(server):
    with server.client() as client, pytest.raises(RequestTooLarge, match="over the server's limit of 65536"):
        client.add("x" * 70_000, 1)  # sent, the server would reset the connection, retried until the deadline


# Longer than the socket buffers hold: the server refuses it unread, and the reset fails its write.
@pytest.mark.parametrize("name", ["x" * 70_000, BEYOND_SOCKET_BUFFERS], ids=["sent whole", "its write failed"])
def test_a_request_over_the_servers_limit_sent_anyway_is_refused_by_it_at_once(server, name):
    started = time.monotonic()
    with server.client(max_message_bytes=None, deadline=30) as client:  # a client whose limit is higher
        with pytest.raises(TApplicationException) as error:
            client.add(name, 1)
        assert client.ping() == "pong"
    assert time.monotonic() - started < 10  # not a reset retried until the deadline
    assert error.value.type == TApplicationException.PROTOCOL_ERROR
    over = r"a request of \d+ bytes, over the server's maximum of 65536 \(THRIFT_MAX_MESSAGE_BYTES\)"
    assert re.fullmatch(over, error.value.message), error.value.message
    # Logged as what it is, not as a malformed message: a client whose limit is higher than the server's.
    assert re.search(rf" WARNING \S+ \[\d+\] closing 127\.0\.0\.1:\d+: {over}\n", server.log())


@pytest.mark.parametrize("unread_by", [SilentServer, ResettingServer], ids=["a hung server", "a reset"])
def test_a_request_whose_write_failed_is_reported_as_not_sent(unread_by):
    # The server never had the request whole, so it cannot have applied it: not "may have been applied".
    other = unread_by()
    try:
        with (
            pytest.raises(ServerUnreachable) as error,
            CountersClient(f"127.0.0.1:{other.port}", max_message_bytes=None, timeout=1, retries=0) as client,
        ):
            client.add(BEYOND_SOCKET_BUFFERS, 1)
    finally:
        other.close()
    assert not error.value.sent, error.value


def test_a_server_of_something_else_that_resets_the_connection_mid_write_is_reported_as_not_sent():
    other = ResettingServer(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # read once the reset failed the write
    try:
        with (
            pytest.raises(UnexpectedReply, match=re.escape("a reply that starts b'HTTP/1.1 400'")) as error,
            CountersClient(f"127.0.0.1:{other.port}", max_message_bytes=None, timeout=5) as client,
        ):
            client.add(BEYOND_SOCKET_BUFFERS, 1)
    finally:
        other.close()
    assert not error.value.sent, error.value


@pytest.mark.parametrize(
    ("servers", "parsed"),
    [
        ("db1:9090", [("db1", 9090)]),
        ("10.0.0.5:9090, 10.0.0.6:9091", [("10.0.0.5", 9090), ("10.0.0.6", 9091)]),
        ("[::1]:9090,[fd00::5]:1", [("::1", 9090), ("fd00::5", 1)]),
        ("bücher.example:9090", [("bücher.example", 9090)]),
    ],
)
def test_servers_parse_host_port_pairs_and_bracketed_ipv6(servers, parsed):
    assert parse_servers(servers) == parsed


@pytest.mark.parametrize(
    "servers",
    [
        *("no-port", "host:", ":9090", "host:0", "host:65536", "host:-1", "::1:9090", ""),
        *("[db1]:9090", "a b:9090", "host:\u00b2", "\udcff:9090", "x" * 64 + ":9090", "a..b:9090"),
    ],
)
def test_malformed_servers_are_refused(servers):
    with pytest.raises(ValueError):
        parse_servers(servers)


def test_a_server_without_a_port_is_refused_as_such():
    with pytest.raises(ValueError, match=r"no port: write host:port, as localhost:9090: '127\.0\.0\.1'"):
        parse_servers("127.0.0.1")


def test_a_method_the_service_lacks_is_refused_by_name(server):
    with server.client() as client, pytest.raises(ValueError, match="Counters has no method 'get_itemz'"):
        client.call("get_itemz", 1)


@pytest.mark.parametrize(("bind", "reached_at"), [("::1", ["[::1]"]), ("::", ["127.0.0.1", "[::1]"])])
def test_a_server_binds_ipv6_and_both_families_and_is_called_there(start_server, bind, reached_at):
    server = start_server(THRIFT_HOST=bind)
    for host in reached_at:
        with CountersClient(f"{host}:{server.port}", retries=0) as client:
            assert client.ping() == "pong"
