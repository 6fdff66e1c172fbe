"""The Counters test service in the tests: its server processes, load on it, and its invariant."""

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from counters import CountersClient, counters_thrift
from helpers.mysql import sql
from helpers.processes import ServerProcess
from servicekit.client import ServerUnreachable, new_request_id

SCRIPT = "tests/servicekit/counters.py"
MID_LOAD_ACKNOWLEDGED = 20  # adds acknowledged before run_adds' mid_load: the load is under way


def counters_process(env: dict[str, str], log_path: Path, **options) -> ServerProcess:
    """`python -W error tests/servicekit/counters.py` on a free port (see ServerProcess)."""
    return ServerProcess(SCRIPT, CountersClient, {"SERVICE_NAME": "counters", **env}, log_path, **options)


def run_adds(
    client: CountersClient,
    names: list[str],
    seconds: float,
    threads: int = 8,
    stop: threading.Event | None = None,
    mid_load: Callable[[], None] | None = None,
) -> dict:
    """Random adds from several threads for `seconds` (or until `stop` is set): what was
    acknowledged (request id, name, amount) and what failed how. `mid_load` (a crash, a restart)
    runs in its own thread once MID_LOAD_ACKNOWLEDGED adds are acknowledged."""
    outcome = {"acknowledged": [], "errors": [], "slowest_failure": 0.0}
    stop_at = time.monotonic() + seconds
    stop = stop or threading.Event()
    loaded = threading.Event()

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at and not stop.is_set():
            request_id, name, amount = new_request_id(), rng.choice(names), rng.randint(1, 50)
            started = time.monotonic()
            try:
                client.add(name, amount, request_id)
                outcome["acknowledged"].append((request_id, name, amount))
                if len(outcome["acknowledged"]) >= MID_LOAD_ACKNOWLEDGED:
                    loaded.set()
            except (counters_thrift.base.Unavailable, ServerUnreachable) as error:
                outcome["errors"].append(type(error).__name__)
                outcome["slowest_failure"] = max(outcome["slowest_failure"], time.monotonic() - started)

    struck: list[float] = []  # when mid_load began: it must strike while the load runs, or the test tests nothing

    def strike() -> None:
        if loaded.wait(max(0.0, stop_at - time.monotonic())):
            struck.append(time.monotonic())
            mid_load()

    workers = [threading.Thread(target=loop, args=(seed,)) for seed in range(threads)]
    if mid_load:
        workers.append(threading.Thread(target=strike))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 120)
        assert not worker.is_alive(), "a call hung"
    if mid_load:
        latest = stop_at - seconds / 2  # half the load still to come
        assert struck, f"fewer than {MID_LOAD_ACKNOWLEDGED} adds acknowledged in {seconds} s: mid_load never ran"
        assert struck[0] <= latest, f"mid_load began {struck[0] - latest:.2f} s after the load's first half"
    return outcome


def assert_consistent(database: dict[str, str]) -> None:
    """Every counter's total is the sum of its additions: no add half-applied."""
    mismatched = sql(
        database,
        "SELECT c.name FROM counters c"
        " WHERE c.total <> (SELECT COALESCE(SUM(a.amount), 0) FROM additions a WHERE a.name = c.name)",
    )
    assert mismatched == []


def assert_applied_once(database: dict[str, str], acknowledged: list[tuple[str, str, int]]) -> None:
    """Every acknowledged add is stored exactly once, and nothing else was added to those counters."""
    names = sorted({name for _, name, _ in acknowledged})
    stored = sql(
        database,
        "SELECT request_id FROM additions WHERE name IN (" + ", ".join(["%s"] * len(names)) + ")",  # noqa: S608
        tuple(names),
    )
    assert sorted(row[0] for row in stored) == sorted(request_id for request_id, _, _ in acknowledged)
