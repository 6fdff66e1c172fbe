"""PooledClient across os.fork(): a client made before the fork (gunicorn --preload, a module-level client,
multiprocessing's fork start method) serves parent and child, each on connections of its own.

Without that, both processes would write requests on the connections they share and each could read the
other's reply; a lock another thread held at the fork would never be released in the child.
"""

import gc
import os
import threading
import weakref

import pytest

from counters import CountersClient
from helpers.forking import ForkedChild
from helpers.load import CallsAtOnce, connection_inodes, connections_to, run_threads
from helpers.mysql import statement_waits
from helpers.pki import make_pki
from servicekit.client import ServerUnreachable
from servicekit.tls import tls_context
from tools.throwaway_db import free_port, wait_for

NAME = "counters.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def wrong_replies(client: CountersClient, who: str) -> str:
    """What went wrong in a second of `repeat` calls from 4 threads, each asking for text naming `who`."""
    wrong: list[str] = []

    def call(rng) -> None:
        text, times = f"{who} {rng.random()} ", rng.randrange(1, 100)
        if (reply := client.call("repeat", text, times)) != text * times:
            wrong.append(f"{who} asked for {text!r} * {times}, got {reply[:40]!r}...")

    errors = run_threads(4, call, seconds=1)
    return "; ".join([*wrong[:3], *(f"{who}: {error!r}" for error in errors[:3])])


def pongs(client: CountersClient) -> str:
    return "" if client.ping() == "pong" else "no pong"


def answers(client: CountersClient) -> bool:
    try:
        return client.ping() == "pong"
    except ServerUnreachable:  # not listening yet
        return False


def test_a_forked_child_and_its_parent_each_read_their_own_replies_on_the_pool_they_shared(start_server):
    server = start_server()
    with server.client(pool_size=4, timeout=2, deadline=5) as client:
        client.ping()  # a connection in the pool when the child is forked
        child = ForkedChild(lambda: wrong_replies(client, "child"))
        in_parent = wrong_replies(client, "parent")
        assert (in_parent, child.join(30)) == ("", (0, ""))
        assert wrong_replies(client, "parent after the child") == ""


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "TLS"])
def test_a_child_that_called_and_closed_the_client_leaves_the_parents_connection_as_it_was(start_server, pki, tls):
    # Closing the connection in the child (shutdown(), a TLS close_notify) would end it for the parent too.
    tls_env = {"THRIFT_TLS_CERT": pki["server"], "THRIFT_TLS_KEY": pki["server_key"]} if tls else {}
    server = start_server(ready=not tls, **tls_env)
    context = tls_context(pki["ca"]) if tls else None
    with CountersClient(f"localhost:{server.port}", tls=context, retries=0, timeout=5) as client:
        wait_for(lambda: answers(client), 30, "the server")
        before = connection_inodes(server.port)

        def call_then_close() -> str:
            with client:
                return pongs(client)

        assert ForkedChild(call_then_close).join(30) == (0, "")
        assert client.ping() == "pong"
        assert connection_inodes(server.port) == before  # the same connection, not one opened again


@pytest.mark.parametrize("lock", ["the pool's", "the addresses'"])
def test_a_fork_while_another_thread_holds_a_lock_of_the_client_leaves_the_child_a_client_that_works(server, lock):
    with server.client(pool_size=2, deadline=5) as client:
        client.ping()
        held = client._available if lock == "the pool's" else client._addresses._lock  # as a call holds them
        locked, forked = threading.Event(), threading.Event()

        def hold() -> None:
            with held:
                locked.set()
                forked.wait(30)

        holder = threading.Thread(target=hold)
        holder.start()
        assert locked.wait(30)
        child = ForkedChild(lambda: pongs(client))
        forked.set()
        holder.join(30)
        assert child.join(20) == (0, "")
        assert client.ping() == "pong"


def test_a_child_forked_during_a_call_has_the_whole_pool_and_the_parents_call_returns(start_server, database):
    server = start_server()
    with server.client(pool_size=1, acquire_timeout=1, deadline=3) as client:
        in_flight = CallsAtOnce(1, lambda: client.call("hold", 1.0))
        wait_for(lambda: statement_waits(database, "SELECT SLEEP"), 10, "the call in flight")
        assert ForkedChild(lambda: pongs(client)).join(20) == (0, "")  # not "all 1 connections stayed busy"
        assert in_flight.join() == [None]
        assert client.ping() == "pong"


def test_a_child_forked_while_the_parent_resolves_resolves_names_itself(start_server):
    port = free_port()
    for host in ("127.0.0.1", "127.0.0.2"):
        start_server(THRIFT_HOST=host, port=port)
    parent, asked, test_over = os.getpid(), [], threading.Event()

    def dns(host: str) -> list[str]:
        if os.getpid() != parent:
            return ["127.0.0.2"]  # where the child's calls must go once it resolves the name itself
        asked.append(host)
        if len(asked) > 1:
            test_over.wait(30)  # the parent's second lookup hangs past the fork
        return ["127.0.0.1"]

    with CountersClient(f"{NAME}:{port}", resolve=dns, resolve_every=0.1, deadline=5) as client:
        try:
            wait_for(lambda: client.ping() and len(asked) > 1, 10, "the parent's lookup in flight")

            def calls_the_new_address() -> str:
                wait_for(lambda: client.ping() and connections_to(port, "127.0.0.2"), 5, "a call to 127.0.0.2")
                return ""

            assert ForkedChild(calls_the_new_address).join(20) == (0, "")
        finally:
            test_over.set()


def test_a_client_dropped_is_not_kept_alive_for_a_fork(server):
    with server.client() as client:
        client.ping()
    gone = weakref.ref(client)
    del client
    gc.collect()
    assert gone() is None
