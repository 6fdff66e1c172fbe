"""Load from several threads, and counting this process's connections to a port."""

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


def connections_to(port: int) -> int:
    """Established TCP connections from this test process to port `port` (IPv4 or IPv6)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed meanwhile by another thread
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state, inode = int(fields[2].split(":")[1], 16), fields[3], fields[9]
            count += remote_port == port and state == "01" and inode in inodes
    return count
