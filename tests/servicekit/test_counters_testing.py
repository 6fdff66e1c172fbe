"""run_adds itself: a crash test whose crash came too late, or never, must fail, not pass having tested nothing."""

import time

import pytest

from counters_testing import MID_LOAD_ACKNOWLEDGED, run_adds


class _SlowClient:
    """Adds that take `seconds` each, as on a loaded machine; the add numbered `late` (from 1) takes `late_seconds`."""

    def __init__(self, seconds: float, late: int = 0, late_seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.late = late
        self.late_seconds = late_seconds
        self.calls = 0  # exact with one calling thread, as where `late` is used

    def add(self, name: str, amount: int, request_id: str) -> None:
        self.calls += 1
        time.sleep(self.late_seconds if self.calls == self.late else self.seconds)


def test_a_mid_load_strike_that_never_came_fails_the_run():
    # The adds alone outlast the load: however slow the machine, sleep() never ends early.
    seconds = MID_LOAD_ACKNOWLEDGED * 0.05 - 0.01
    with pytest.raises(AssertionError, match="never ran"):
        run_adds(_SlowClient(0.05), ["a"], seconds=seconds, threads=1, mid_load=lambda: None)


def test_a_mid_load_strike_in_the_loads_second_half_fails_the_run():
    # The 20th add ends 2 s into a 3 s load at the earliest, past its first half with a second to spare:
    # a busy machine can only delay the strike further, and only by that second.
    slow = _SlowClient(0.01, late=MID_LOAD_ACKNOWLEDGED, late_seconds=1.8)
    with pytest.raises(AssertionError, match="after the load's"):
        run_adds(slow, ["a"], seconds=3, threads=1, mid_load=lambda: None)


def test_a_mid_load_strike_early_in_the_load_passes():
    ran = []
    # 20 adds of 10 ms on 2 threads: 0.1 s, in a first half of 1.5 s that leaves a busy machine room.
    outcome = run_adds(_SlowClient(0.01), ["a"], seconds=3, threads=2, mid_load=lambda: ran.append(True))
    assert ran == [True]
    assert len(outcome["acknowledged"]) >= MID_LOAD_ACKNOWLEDGED
