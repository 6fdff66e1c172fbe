"""Load from several threads, and counting this process's connections to a port."""

import ipaddress
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path


def run_threads(count: int, target: Callable[[random.Random], object], seconds: float) -> list[Exception]:
    """Run target(rng) in `count` threads until `seconds` pass; return what they raised (each stops at its first)."""
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
        thread.join(seconds + 120)
        assert not thread.is_alive(), "a call hung"
    return errors


class CallsAtOnce:
    """`count` threads each making `call()` once, started now; join() waits for them and returns what each
    returned or raised, in the order they ended."""

    def __init__(self, count: int, call: Callable[[], object]) -> None:
        self.outcomes: list[object] = []

        def one() -> None:
            try:
                self.outcomes.append(call())
            except Exception as error:  # noqa: BLE001 - an outcome like any other
                self.outcomes.append(error)

        self.threads = [threading.Thread(target=one) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def join(self, timeout: float = 60) -> list[object]:
        for thread in self.threads:
            thread.join(timeout)
            assert not thread.is_alive(), "a call hung"
        return self.outcomes


def connections_to(port: int, host: str | None = None) -> int:
    """Established TCP connections from this test process to port `port` (IPv4 or IPv6), of `host` if given."""
    return len(connection_inodes(port, host))


def connection_inodes(port: int, host: str | None = None) -> set[str]:
    """The sockets (by inode) of connections_to(port, host): the same set later means the same connections."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile by another thread
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    # By inode: the kernel writes these tables a page at a time, so a socket
    # can appear twice when connections open and close meanwhile.
    counted = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_ip, remote_port = fields[2].split(":")
            if int(remote_port, 16) != port or fields[3] != "01" or fields[9] not in inodes:
                continue
            if host is None or _kernel_ip(remote_ip) == ipaddress.ip_address(host):
                counted.add(fields[9])
    return counted


def _kernel_ip(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp* shows it: 32-bit words of hex in the machine's (little-endian) byte order."""
    words = [bytes.fromhex(hex_ip[i : i + 8])[::-1] for i in range(0, len(hex_ip), 8)]
    return ipaddress.ip_address(b"".join(words))
