"""The pre-fork supervisor: several server processes on one listening socket, past the GIL's limit on one.

`serve_in_processes()` forks copies of a listening TThreadPoolServer; the kernel spreads new connections over
them. Each child opens its own database pool (connections must not cross a fork). SIGTERM or SIGINT to the parent
drains every child; a child that dies otherwise is replaced (later each time while they die young); a child whose
parent dies drains and exits.
"""

import logging
import os
import select
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass

from servicekit.thread_pool_server import TThreadPoolServer

logger = logging.getLogger(__name__)
RESTART_PAUSE_SECONDS = 1.0  # before a dead child is replaced: no tight restart loop if children keep failing
# A child that dies sooner than this after it started doubles the pause, up to this: a crash loop slows to a
# restart a minute (each leaves metrics files behind). One that lived longer starts the pause over.
CRASH_LOOP_SECONDS = 60.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class _Child:
    started: float  # time.monotonic()
    exited: int  # a pidfd: readable once the child has exited


class _Supervisor:
    """The parent's state: its children, and when the dead ones are replaced.

    Its loop (serve_in_processes) waits on one descriptor per child, and on
    one a stop makes readable, so every death is reaped and counted as it
    happens; a pause before restarting never holds up a stop or another
    death, and the children that died during it are replaced together.
    """

    def __init__(
        self, server: TThreadPoolServer, prepare_child: Callable[[], None], child_started: Callable[[int], None]
    ) -> None:
        self.server = server
        self.prepare_child = prepare_child
        self.child_started = child_started
        self.children: dict[int, _Child] = {}
        self.stopping = False
        self.pause = RESTART_PAUSE_SECONDS
        self.missing = 0  # children dead and not yet replaced
        self.restart_at = 0.0  # time.monotonic() when they are
        self.stopped = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # readable once stop() ran

    def start_child(self) -> None:
        """Fork a child that serves until SIGTERM, or until this process dies.

        The stop signals wait while the child is forked: one that came before
        the child's own handlers would run the parent's stop() in it. They wait
        in this thread only: one another thread takes (the metrics server's)
        runs stop() here as soon as fork() returns, before the child is
        counted, so the child is then stopped here. And the parent's pid is
        taken before the fork: read after it, a parent already dead would be
        init's, and the child would never drain.
        """
        parent = os.getpid()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        if self.stopping:  # a stop came as this began (its handler runs as the mask changes)
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            return
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            raise
        if pid:
            self.children[pid] = _Child(time.monotonic(), os.pidfd_open(pid))  # a zombie's too, if it died already
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a stop that came meanwhile reaches this child too
            self.child_started(pid)
            if self.stopping:  # stop() ran before the child was counted, and did not signal it
                os.kill(pid, signal.SIGTERM)
            return
        status = 1
        try:
            self.server.parent_pid = parent
            for signum in STOP_SIGNALS:
                signal.signal(signum, lambda *_: self.server.close())
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # one that came meanwhile closes this server
            self.prepare_child()
            self.server.serve()
            status = 0
        except BaseException:
            logger.exception("server process failed")
        finally:
            logging.shutdown()
            os._exit(status)

    def stop(self, *_: object) -> None:
        self.stopping = True
        # The kernel keeps queueing connections while any process holds the
        # listening socket: close ours, so a drain refuses them at once.
        self.server.close_listener()
        os.eventfd_write(self.stopped, 1)
        for pid in self.children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def running(self) -> bool:
        """Children left, or dead ones still to replace."""
        return bool(self.children) or (self.missing > 0 and not self.stopping)

    def wait(self) -> None:
        """Until a child exits, a stop, or the time to replace the dead ones."""
        exits = [child.exited for child in self.children.values()]
        if self.stopping:  # the stop's descriptor stays readable: now only the children's exits matter
            select.select(exits, [], [])
            return
        timeout = max(0.0, self.restart_at - time.monotonic()) if self.missing else None
        select.select([self.stopped, *exits], [], [], timeout)

    def reap(self, child_exited: Callable[[int], None]) -> None:
        """Collect every child that exited; each is replaced after the pause unless a stop came."""
        for pid, child in list(self.children.items()):
            ended, wait_status = os.waitpid(pid, os.WNOHANG)
            if not ended:
                continue
            del self.children[pid]
            os.close(child.exited)
            child_exited(pid)
            if not self.stopping:
                self._to_replace(pid, wait_status, time.monotonic() - child.started)

    def _to_replace(self, pid: int, wait_status: int, lived: float) -> None:
        """Count a dead child to replace. The first death of a round sets when, and doubles the next round's
        pause; a child that lived a while starts the pause over."""
        now = time.monotonic()
        if lived >= CRASH_LOOP_SECONDS:
            self.pause = RESTART_PAUSE_SECONDS
        if not self.missing:
            self.restart_at = now + self.pause
            self.pause = min(2 * self.pause, CRASH_LOOP_SECONDS)
        self.missing += 1
        code = os.waitstatus_to_exitcode(wait_status)
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        logger.error("server process %d %s; starting another in %g s", pid, how, round(self.restart_at - now, 3))

    def replace_the_dead(self) -> None:
        """Start a child for each dead one once the pause is over."""
        if self.missing and not self.stopping and time.monotonic() >= self.restart_at:
            for _ in range(self.missing):
                self.start_child()
            self.missing = 0


def serve_in_processes(
    server: TThreadPoolServer,
    processes: int,
    prepare_child: Callable[[], None],
    children_started: Callable[[], None] = lambda: None,
    child_started: Callable[[int], None] = lambda pid: None,
    child_exited: Callable[[int], None] = lambda pid: None,
) -> None:
    """Run `processes` forked copies of `server` until SIGTERM; return when all have exited.

    Call after server.listen() and before any thread starts. Each child runs
    prepare_child(), then serve(). children_started() runs once the first
    children are forked (a place to start threads, which must not exist at
    fork time); child_started(pid) after each fork, child_exited(pid) after
    each child ends.
    """
    supervisor = _Supervisor(server, prepare_child, child_started)
    # Before the first fork: the children serve at once, and a stop that came before this handler would kill
    # this process outright (each child installs its own before the signals it held reach it).
    for signum in STOP_SIGNALS:
        signal.signal(signum, supervisor.stop)
    for _ in range(processes):
        supervisor.start_child()
    children_started()
    while supervisor.running():
        supervisor.wait()
        supervisor.reap(child_exited)
        supervisor.replace_the_dead()
    server.close_listener()
