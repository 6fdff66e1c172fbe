"""Real processes for the tests: a server on a free port, and `python ...` runs of the project's scripts.

Their environment is the caller's without its settings: each test gives them those it needs.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import thriftpy2

from servicekit.addresses import host_port
from servicekit.base import BASE_THRIFT
from servicekit.client import PooledClient, ServerUnreachable
from servicekit.settings import declared, misspelled
from tools.throwaway_db import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
# ping and health, which every service on the kit answers: a client of any of them.
BaseService = thriftpy2.load(str(BASE_THRIFT), module_name="servicekit_base_thrift").BaseService
# Every setting's name: the developer's shell may export settings for local runs (the README says
# so), and the suite's servers and clients must see only those each test gives them.
SETTING_NAMES = frozenset(declaration.name.upper() for declaration in declared())
# And names almost a setting's (THRIFT_HOSTS): the servers and clients would warn of them in their output.
SHELL_NAMES_LEFT_OUT = SETTING_NAMES | {name for name in os.environ if misspelled({name: ""})}
# Scripts outside the project's root (the kit's test service) import its modules too.
PROJECT_ENV = {
    **{name: value for name, value in os.environ.items() if name not in SHELL_NAMES_LEFT_OUT},
    "PYTHONPATH": str(ROOT),
}


def run_python(*args: str, timeout: float = 60, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
    """Run `python ARGS` in the project directory (or `cwd`) with extra environment variables."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env={**PROJECT_ENV, **env}, capture_output=True, text=True, timeout=timeout
    )


class PortTaken(RuntimeError):
    """A server exited because another process holds its port."""


def listens_on(pid: int, port: int) -> bool:
    """Whether process `pid`, or one it started, holds a socket listening on TCP `port`."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state, inode = (fields := line.split())[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                listening.add(f"socket:[{inode}]")
    for process in (pid, *descendants(pid)):
        with suppress(OSError):  # a process, or a descriptor, gone meanwhile
            for fd in Path(f"/proc/{process}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) in listening:
                        return True
    return False


def descendants(pid: int) -> set[int]:
    """Every process `pid` started, and theirs, while they run."""
    try:
        children = child_pids(pid)
    except OSError:  # exited
        return set()
    return children.union(*(descendants(child) for child in children))


class ServerProcess:
    """A server process (`python -W error SCRIPT` by default) on a free port, logging to `log_path`.

    client_class(servers, **options) makes a client of it (see client()).
    """

    def __init__(
        self,
        script: str,
        client_class: Callable[..., PooledClient],
        env: dict[str, str],
        log_path: Path,
        command: list[str] | None = None,
        port: int | None = None,
        ready: bool = True,
        cwd: Path = ROOT,
    ) -> None:
        self.client_class = client_class
        self.log_path = log_path
        for attempt in range(1, 4):  # free_port may give another test worker the same port before either binds it
            self.port = port or free_port()
            self.env = {
                "THRIFT_HOST": "127.0.0.1",
                **PROJECT_ENV,
                "PYTHONPATH": str(cwd),
                **env,
                "THRIFT_PORT": str(self.port),
            }
            with log_path.open("wb") as log:
                self.process = subprocess.Popen(
                    command or [sys.executable, "-W", "error", script],
                    cwd=cwd,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if not ready:  # a plain ping answers (not so for a TLS server)
                return
            try:
                wait_for(self._answers, 30, f"{script} to start")
                return
            except PortTaken:
                if port or attempt == 3:
                    raise

    def _answers(self) -> bool:
        """Whether this server answers a ping, and on a port it holds: a server of another test worker given the
        same port would answer in its place."""
        if self.process.poll() is not None:
            failure = PortTaken if "Address already in use" in self.log() else RuntimeError
            raise failure(f"server exited with {self.process.returncode}:\n{self.log()}")
        try:
            with self.client(timeout=1, retries=0) as client:
                return client.ping() == "pong" and listens_on(self.process.pid, self.port)
        except ServerUnreachable:
            return False

    @property
    def address(self) -> str:
        """host:port where clients reach it (THRIFT_HOST, or localhost when it binds every address)."""
        host = self.env["THRIFT_HOST"]
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return host_port(host, self.port)

    def client(self, timeout: float = 10, **options) -> PooledClient:
        return self.client_class(self.address, timeout=timeout, **options)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


# make(env, log_path, port=..., ready=...) -> a ServerProcess of one service.
MakeServer = Callable[..., ServerProcess]


@contextmanager
def shared_server(make: MakeServer, env: dict[str, str], directory: Path) -> Iterator[ServerProcess]:
    """One server for the tests that do not stop or reconfigure it; it must drain and exit 0 at the end."""
    process = make(env, directory / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@contextmanager
def dedicated_servers(make: MakeServer, env: dict[str, str], directory: Path) -> Iterator[Callable[..., ServerProcess]]:
    """start(port=None, ready=True, **more_env): a server for one test; every one still running is killed after."""
    started: list[ServerProcess] = []

    def start(port: int | None = None, ready: bool = True, **more_env: str) -> ServerProcess:
        process = make({**env, **more_env}, directory / f"server-{len(started)}.log", port=port, ready=ready)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.stop(signal.SIGKILL)


def base_client(servers: str, **options) -> PooledClient:
    """A client of any service on the kit, for ping and health."""
    return PooledClient(BaseService, servers, **options)


def child_pids(pid: int) -> set[int]:
    """The processes `pid` forked (THRIFT_PROCESSES > 1)."""
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def all_children(pid: int, count: int) -> set[int]:
    """The `count` processes `pid` forks, once all have started (the first may answer before the last is forked)."""
    wait_for(lambda: len(child_pids(pid)) == count, 10, f"{count} server processes")
    return child_pids(pid)


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
