"""PooledClient behind one name: every address it resolves to gets connections, as pods come and go.

Servers listen on 127.0.0.1, .2 and .3 (one port, as pods behind a
Kubernetes headless Service do) and a FakeDNS gives the name whichever of
them the test says, the way a Service's endpoints change.
"""

import socket
import threading
import time

import pytest

from counters import CountersClient
from counters_testing import assert_applied_once, assert_consistent, counters_process, run_adds
from helpers.load import connections_to, run_threads
from helpers.metrics import sample, scrape
from helpers.mysql import statement_waits
from servicekit import addresses
from servicekit.client import ServerUnreachable
from tools.throwaway_db import free_port, wait_for

NAME = "counters.test"
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


class FakeDNS:
    """A resolver whose answers the test sets (name -> IP addresses); it records what it was asked."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = list(addresses)
        self.asked: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.asked.append(host)
        if host != NAME or not self.addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.addresses)


@pytest.fixture(scope="module")
def port(database, tmp_path_factory) -> int:
    """Three servers on one port, at 127.0.0.1, .2 and .3; the port."""
    port = free_port()
    logs = tmp_path_factory.mktemp("three")
    servers = [counters_process({**database, "THRIFT_HOST": host}, logs / f"{host}.log", port=port) for host in HOSTS]
    yield port
    for server in servers:
        assert server.stop() == 0, server.log()


def spread(port: int) -> list[int]:
    """This process's connections to each of the three servers."""
    return [connections_to(port, host) for host in HOSTS]


def test_a_name_spreads_the_pool_evenly_over_every_address_it_resolves_to(port):
    with CountersClient(f"{NAME}:{port}", resolve=FakeDNS(*HOSTS), pool_size=6) as client:
        client.add("spread", 1)
        errors = run_threads(6, lambda rng: client.add("spread", 1), seconds=1)
        assert errors == []
        connections = spread(port)
        assert min(connections) >= 1 and max(connections) - min(connections) <= 1


def test_a_dual_stack_name_spreads_the_pool_over_pods_not_over_each_pods_two_addresses(port, start_server):
    # A dual-stack headless Service gives each pod an IPv4 and an IPv6 address. Counted as two servers, a pod
    # would take two shares of the pool, and a call that timed out on a hung pod could be retried on it again.
    start_server(THRIFT_HOST="::1", port=port)  # the first pod's IPv6 address (this machine has no other)
    dns = FakeDNS(HOSTS[0], "::1", HOSTS[1])  # IPv4 first, as the resolver ordered them
    with CountersClient(f"{NAME}:{port}", resolve=dns, pool_size=4) as client:
        errors = run_threads(4, lambda rng: client.ping(), seconds=0.5)
        assert errors == []
        first, second, _ = spread(port)
        assert connections_to(port, "::1") == 0 and min(first, second) >= 1 and abs(first - second) <= 1


def test_a_name_whose_first_family_is_unreachable_is_called_on_the_other_until_the_first_answers(start_server):
    ipv4 = start_server(THRIFT_HOST="127.0.0.1")
    dns = FakeDNS("::1", "127.0.0.1")  # IPv6 first, where nothing listens yet
    with CountersClient(f"{NAME}:{ipv4.port}", resolve=dns, retries=0) as client:
        assert client.ping() == "pong"  # its one attempt goes on to IPv4
        assert connections_to(ipv4.port, "127.0.0.1") == 1
        start_server(THRIFT_HOST="::1", port=ipv4.port)
        # Once the IPv6 address is no longer skipped (a second after its failure), calls go there alone.
        wait_for(lambda: client.ping() == "pong" and connections_to(ipv4.port, "::1") == 1, 10, "a call to IPv6")
        assert client.ping() == "pong" and connections_to(ipv4.port, "127.0.0.1") == 0


def test_addresses_that_appear_get_connections_and_those_gone_lose_theirs_while_no_call_fails(port, database):
    dns = FakeDNS(HOSTS[0])
    stop = threading.Event()
    outcome = {}
    with CountersClient(f"{NAME}:{port}", resolve=dns, resolve_every=0.2, pool_size=6) as client:
        load = threading.Thread(target=lambda: outcome.update(run_adds(client, ["grow"], 60, threads=6, stop=stop)))
        load.start()
        try:
            wait_for(lambda: spread(port)[0] >= 2, 10, "calls to the first address")
            assert spread(port)[1:] == [0, 0]
            dns.addresses = HOSTS  # two pods become ready
            wait_for(lambda: min(spread(port)) >= 2, 15, "connections to every address")
            dns.addresses = HOSTS[1:]  # the first pod is taken out; its server still answers
            wait_for(lambda: spread(port)[0] == 0, 10, "connections to the first address to close")
            wait_for(lambda: min(spread(port)[1:]) >= 2, 10, "the others to take its share")
        finally:
            stop.set()
            load.join()
    assert outcome["errors"] == [] and len(outcome["acknowledged"]) > 50
    assert_applied_once(database, outcome["acknowledged"])


def test_a_call_in_flight_to_an_address_that_is_gone_finishes_before_its_connection_closes(port, database):
    dns = FakeDNS(HOSTS[0])
    with CountersClient(f"{NAME}:{port}", resolve=dns, resolve_every=0.1, pool_size=2) as client:
        holding = threading.Thread(target=client.call, args=("hold", 2.0))
        holding.start()
        wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the call to hold its connection")
        assert client.ping() == "pong"  # a second connection, idle after this call
        assert spread(port) == [2, 0, 0]
        dns.addresses = HOSTS[1:]
        # Calls have the name resolved again (every 0.1 s); the idle connection closes.
        wait_for(lambda: client.ping() and spread(port)[0] == 1, 5, "the idle connection to the first address to close")
        assert holding.is_alive()  # still running, on the connection that stays until its reply
        holding.join(10)
        assert spread(port)[0] == 0


def test_a_failed_connection_has_the_name_resolved_again_without_waiting_for_the_period(port, start_server):
    moving = start_server(THRIFT_HOST="127.0.0.4", port=port)
    dns = FakeDNS("127.0.0.4")
    with CountersClient(f"{NAME}:{port}", resolve=dns, resolve_every=600) as client:
        client.add("moved", 1)
        assert moving.stop() == 0
        dns.addresses = HOSTS[1:2]  # the pod was replaced by one at another address
        started = time.monotonic()
        assert client.add("moved", 1).total >= 2
        assert time.monotonic() - started < 10
        assert dns.asked.count(NAME) >= 2


def black_hole(host: str, port: int) -> list[socket.socket]:
    """A listener on host:port whose backlog is full: connections to it time out, as to a pod's gone IP."""
    listener = socket.create_server((host, port), backlog=0)
    held = [listener]
    while True:  # until a connection is no longer queued: the kernel drops the next ones' SYNs
        held.append(client := socket.socket())
        try:
            client.settimeout(0.5)
            client.connect((host, port))
        except TimeoutError:
            return held


def test_an_idle_client_whose_pods_were_all_replaced_calls_the_new_ones_not_the_gone(port, start_server):
    old = ["127.0.0.4", "127.0.0.5"]
    dns = FakeDNS(*old)
    replaced = [start_server(THRIFT_HOST=host, port=port) for host in old]
    with CountersClient(f"{NAME}:{port}", resolve=dns, resolve_every=0, deadline=3, connect_timeout=2) as client:
        run_threads(2, lambda rng: client.ping(), seconds=0.2)
        for server in replaced:  # a rolling update while the client is idle: drained, their IPs gone
            assert server.stop() == 0
        holes = [sock for host in old for sock in black_hole(host, port)]
        try:
            dns.addresses = HOSTS
            assert client.add("replaced", 1).total >= 1  # not two connect timeouts to the gone pods
        finally:
            for sock in holes:
                sock.close()


def test_a_name_that_stops_resolving_keeps_its_addresses(port):
    dns = FakeDNS(*HOSTS)
    with CountersClient(f"{NAME}:{port}", resolve=dns, resolve_every=0.05, pool_size=3) as client:
        client.ping()
        dns.addresses = []  # every lookup fails from now on
        errors = run_threads(3, lambda rng: client.ping(), seconds=0.5)
        assert errors == [] and len(dns.asked) > 2


def test_ip_addresses_are_not_looked_up_and_a_name_that_does_not_resolve_is_unreachable(port):
    dns = FakeDNS()
    with CountersClient(f"{HOSTS[1]}:{port},[::1]:{free_port('::1')}", resolve=dns) as client:
        assert client.ping() == "pong"
    assert dns.asked == []
    with pytest.raises(ServerUnreachable, match=f"{NAME}:{port} \\(cannot resolve: .*not known"):
        with CountersClient(f"{NAME}:{port}", resolve=dns, retries=0) as client:
            client.ping()
    assert dns.asked == [NAME]


def test_a_resolver_that_never_answers_holds_a_call_no_longer_than_its_deadline(port):
    answer = threading.Event()

    def hung_dns(host: str) -> list[str]:
        answer.wait(60)
        return [HOSTS[0]]

    try:
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match=f"{NAME}:{port} \\(no answer from the resolver within"):
            with CountersClient(f"{NAME}:{port}", resolve=hung_dns, deadline=1) as client:
                client.ping()
        assert time.monotonic() - started < 5  # its 1 s, not the resolver's 60
    finally:
        answer.set()


def test_a_busy_client_goes_on_calling_while_a_due_resolution_hangs(port, monkeypatch):
    # Its addresses are less than two intervals old: a wait for the resolver would hold every call on DNS.
    monkeypatch.setattr(addresses, "RESOLVE_WAIT_SECONDS", 600)  # so that a wait would outlast the test
    dns, hanging, release = FakeDNS(*HOSTS), threading.Event(), threading.Event()

    def slow_dns(host: str) -> list[str]:
        if dns.asked:  # every resolution after the first hangs until the test ends
            hanging.set()
            release.wait()
        return dns(host)

    with CountersClient(f"{NAME}:{port}", resolve=slow_dns, resolve_every=2, deadline=5) as client:
        try:
            wait_for(lambda: client.ping() == "pong" and hanging.is_set(), 10, "a due resolution to hang")
            answered = []
            caller = threading.Thread(target=lambda: answered.append(client.ping()))
            caller.start()
            caller.join(3)
            assert answered == ["pong"]
        finally:
            release.set()


def test_a_resolver_that_raises_fails_that_call_only(port):
    answers = iter([RuntimeError("discovery is down"), [HOSTS[0]]])

    def flaky_dns(host: str) -> list[str]:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with CountersClient(f"{NAME}:{port}", resolve=flaky_dns, retries=0, deadline=5) as client:
        with pytest.raises(ServerUnreachable, match="cannot resolve: discovery is down"):
            client.ping()
        assert client.ping() == "pong"  # resolved again


def test_a_rolling_restart_behind_one_name_fails_no_call_and_ends_spread_over_all_three(start_server, database):
    port, metrics_port = free_port(), free_port()

    def start(host: str):
        return start_server(port=port, THRIFT_HOST=host, METRICS_PORT=str(metrics_port))

    def served(host: str) -> float:
        return sample(scrape(metrics_port, host), "counters_requests_total", method="add", outcome="ok")

    servers = {host: start(host) for host in HOSTS}
    stop = threading.Event()
    outcome = {}
    with CountersClient(f"{NAME}:{port}", resolve=FakeDNS(*HOSTS), pool_size=8) as client:
        names = [f"rolling-{n}" for n in range(6)]
        load = threading.Thread(target=lambda: outcome.update(run_adds(client, names, 60, stop=stop)))
        load.start()
        try:
            for host in HOSTS:
                wait_for(lambda host=host: connections_to(port, host) > 0, 15, f"calls to {host}")
                assert servers[host].stop() == 0  # SIGTERM: drains and exits
                servers[host] = start(host)
            wait_for(lambda: min(served(host) for host in HOSTS) >= 20, 15, "calls to every restarted server")
        finally:
            stop.set()
            load.join()
    assert outcome["errors"] == [] and len(outcome["acknowledged"]) > 100
    assert_applied_once(database, outcome["acknowledged"])
    assert_consistent(database)
