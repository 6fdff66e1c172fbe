"""A child forked from the test process, as gunicorn --preload or multiprocessing's fork start method makes one.

The child runs one function and leaves with os._exit: it never returns into pytest (its fixtures' finalizers,
its report), and whatever it raises is reported to the parent, which waits for it with a timeout.
"""

import os
import select
import signal
import time
import warnings
from collections.abc import Callable

REPORT_BYTES = 4096  # of what the child reports: less than a pipe holds, so its write never blocks


class ForkedChild:
    """work() run in a child forked now; it returns "" when all went well, else what went wrong.

    join() waits for the child and returns (its exit status, its report).
    """

    def __init__(self, work: Callable[[], str]) -> None:
        self._reports, report_end = os.pipe()
        with warnings.catch_warnings():  # Python 3.12 warns of forking a process with threads: what is tested
            warnings.simplefilter("ignore", DeprecationWarning)
            self.pid = os.fork()
        if self.pid == 0:
            _run_child(work, report_end)
        os.close(report_end)

    def join(self, timeout: float = 60) -> tuple[int, str]:
        """The child's exit status and report; a child still running after `timeout` seconds is killed
        (status -9, the report saying it hung)."""
        report = self._read_report(time.monotonic() + timeout)
        if report is None:
            os.kill(self.pid, signal.SIGKILL)
            report = f"the child hung for {timeout} s"
        _, wait_status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(wait_status), report

    def _read_report(self, give_up_at: float) -> str | None:
        """Everything the child wrote, once it exited (end of file); None if it did not within the time."""
        data = b""
        try:
            while select.select([self._reports], [], [], max(0.0, give_up_at - time.monotonic()))[0]:
                if not (chunk := os.read(self._reports, REPORT_BYTES)):
                    return data.decode(errors="replace")
                data += chunk
            return None
        finally:
            os.close(self._reports)


def _run_child(work: Callable[[], str], report_end: int) -> None:
    """In the child: run work(), report, exit 0 if it reported nothing, 1 if it did, 2 if it raised."""
    status, report = 2, "work() ended without a report"
    try:
        report = work()
        status = 1 if report else 0
    except BaseException as error:  # noqa: BLE001 - reported to the parent: nothing may escape into pytest
        report = f"{type(error).__name__}: {error}"
    finally:
        try:
            os.write(report_end, report.encode()[:REPORT_BYTES])
        finally:
            os._exit(status)
