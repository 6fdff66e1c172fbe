"""LedgerClient under failure: pool bounds, restarts, lost replies, kill -9, failover."""

import os
import random
import signal
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from client import LedgerClient, ServerUnreachable, new_request_id
from conftest import sql, wait_for


def connections_to(port: int) -> int:
    """Established TCP connections from this test process to 127.0.0.1:port."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile by another thread
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
        count += remote_port == port and state == "01" and inode in inodes
    return count


def run_threads(count: int, target, seconds: float) -> list[Exception]:
    """Run target(rng) in `count` threads until `seconds` pass; return what they raised."""
    errors: list[Exception] = []
    stop_at = time.monotonic() + seconds

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            try:
                target(rng)
            except Exception as error:  # noqa: BLE001 - collected for the assertion
                errors.append(error)
                return

    threads = [threading.Thread(target=loop, args=(seed,)) for seed in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


class ReplyDroppingProxy:
    """A TCP proxy that cuts the connection instead of forwarding the first `drop` replies."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port = target_port
        self.drop = drop
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        while data := self._recv(source):
            if replies and self.drop > 0:
                self.drop -= 1
                break  # the server committed and replied; the client never hears it
            sink.sendall(data)
        for sock in (source, sink):  # shutdown, unlike close, wakes the other pump and sends FIN
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        self.listener.close()


def test_pool_never_opens_more_than_its_size_under_32_threads(ledger):
    with ledger.client() as setup:
        account = setup.create_account("pool").id
    most_seen = 0
    with ledger.client(pool_size=4) as client:

        def call(rng: random.Random) -> None:
            nonlocal most_seen
            client.get_account(account) if rng.random() < 0.8 else client.deposit(account, 1)
            most_seen = max(most_seen, connections_to(ledger.port))

        errors = run_threads(32, call, seconds=2)
    assert errors == []
    assert 1 < most_seen <= 4


def test_busy_pool_makes_a_caller_wait_then_give_up(ledger, locked_account):
    account, lock_waits, release = locked_account
    with ledger.client(pool_size=1, acquire_timeout=0.5, retries=0) as client:
        blocked = threading.Thread(target=client.deposit, args=(account, 1))
        blocked.start()
        wait_for(lock_waits, 10, "the deposit to hold the only connection")
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match="busy"):
            client.ping()
        assert 0.4 < time.monotonic() - started < 3
        release()
        blocked.join(10)
        assert client.ping() == "pong"


def test_server_restart_between_two_calls_is_invisible(start_ledger):
    server = start_ledger()
    with server.client() as client:
        account = client.create_account("restart").id
        assert server.stop() == 0
        server = start_ledger(port=server.port)
        assert client.get_account(account).owner == "restart"


def test_lost_reply_is_retried_and_applied_once(ledger, client):
    account = client.create_account("lost reply").id
    proxy = ReplyDroppingProxy(ledger.port, drop=1)
    try:
        with LedgerClient(f"127.0.0.1:{proxy.port}") as through_proxy:
            transfer = through_proxy.deposit(account, 40)
    finally:
        proxy.close()
    assert proxy.drop == 0  # the first reply really was lost
    assert client.get_account(account).balance == 40
    assert [t.id for t in client.list_transfers(account, limit=10).transfers] == [transfer.id]


def test_kill_9_mid_load_loses_no_acknowledged_write_and_duplicates_none(start_ledger, database):
    server = start_ledger()
    acknowledged: list[tuple[str, int]] = []
    with server.client(pool_size=8, retries=30, deadline=60) as client:
        account = client.create_account("kill -9").id

        def deposit(rng: random.Random) -> None:
            request_id, amount = new_request_id(), rng.randint(1, 100)
            client.deposit(account, amount, request_id)
            acknowledged.append((request_id, amount))

        def kill_and_restart() -> None:
            time.sleep(1)
            server.stop(signal.SIGKILL)
            time.sleep(0.3)
            start_ledger(port=server.port)

        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        errors = run_threads(8, deposit, seconds=3)
        killer.join()
        assert errors == []
        assert client.get_account(account).balance == sum(amount for _, amount in acknowledged)
    stored = sql(database, "SELECT request_id FROM transfers WHERE to_account_id = %s", (account,))
    assert sorted(row[0] for row in stored) == sorted(request_id for request_id, _ in acknowledged)
    assert len(acknowledged) > 50


def test_calls_spread_over_servers_and_survive_one_stopping(start_ledger):
    first, second = start_ledger(), start_ledger()
    with LedgerClient(f"127.0.0.1:{first.port},127.0.0.1:{second.port}", pool_size=4) as client:
        account = client.create_account("two servers").id
        errors = run_threads(8, lambda rng: client.get_account(account), seconds=0.5)
        assert errors == []
        assert connections_to(first.port) > 0 and connections_to(second.port) > 0
        assert first.stop() == 0
        errors = run_threads(8, lambda rng: client.deposit(account, 1), seconds=1)
        assert errors == []
        assert client.get_account(account).balance > 0


def test_closing_the_client_closes_every_connection(ledger):
    client = ledger.client(pool_size=4)
    run_threads(8, lambda rng: client.ping(), seconds=0.3)
    assert connections_to(ledger.port) > 0
    client.close()
    assert connections_to(ledger.port) == 0
    with pytest.raises(ServerUnreachable, match="closed"):
        client.ping()
