"""run_adds itself: a crash test whose crash came too late, or never, must fail, not pass having tested nothing."""

import time

import pytest

from counters_testing import MID_LOAD_ACKNOWLEDGED, run_adds


class _SlowClient:
    """Adds that take `seconds` each, as on a loaded machine."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def add(self, name: str, amount: int, request_id: str) -> None:
        time.sleep(self.seconds)


@pytest.mark.parametrize(
    ("seconds", "why"),
    [(MID_LOAD_ACKNOWLEDGED * 0.05 - 0.01, "never ran"), (MID_LOAD_ACKNOWLEDGED * 0.05 + 0.1, "after the load's")],
    ids=["never", "at the end"],
)
def test_a_mid_load_strike_that_came_too_late_fails_the_run(seconds, why):
    ran = []
    with pytest.raises(AssertionError, match=why):
        run_adds(_SlowClient(0.05), ["a"], seconds=seconds, threads=1, mid_load=lambda: ran.append(True))


def test_a_mid_load_strike_early_in_the_load_passes():
    ran = []
    outcome = run_adds(_SlowClient(0.01), ["a"], seconds=1, threads=2, mid_load=lambda: ran.append(True))
    assert ran == [True]
    assert len(outcome["acknowledged"]) >= MID_LOAD_ACKNOWLEDGED
