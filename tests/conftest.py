"""Fixtures: a real database, real server processes and the real client.

The database is the one named by MYSQL_HOST (and the other MYSQL_*
variables) when the caller sets it; otherwise a throwaway MariaDB/MySQL
server is started from the installed binaries in a temporary directory.
Servers run as `python -W error server.py` on a fresh free port each.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import MySQLdb
import pytest
from hypothesis import settings

from client import LedgerClient, ServerUnreachable
from throwaway_db import ThrowawayDatabase, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
# The fuzz test's budget; a longer run: pytest -k fuzz --hypothesis-profile=long
settings.register_profile("suite", max_examples=10_000, deadline=None)
settings.register_profile("long", max_examples=1_000_000, deadline=None)
settings.load_profile("suite")
TEST_DATABASE = "ledger_test"


@pytest.fixture(scope="session")
def database(tmp_path_factory) -> dict[str, str]:
    """MYSQL_* variables of an empty, migrated-on-first-use test database."""
    if os.environ.get("MYSQL_HOST"):
        env = {
            "MYSQL_HOST": os.environ["MYSQL_HOST"],
            "MYSQL_PORT": os.environ.get("MYSQL_PORT", "3306"),
            "MYSQL_USER": os.environ.get("MYSQL_USER", "root"),
            "MYSQL_PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
            "MYSQL_DATABASE": os.environ.get("MYSQL_DATABASE", TEST_DATABASE),
        }
        connection = MySQLdb.connect(**{**connect_kwargs(env), "database": ""})
        connection.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{env['MYSQL_DATABASE']}` CHARACTER SET utf8mb4")
        connection.close()
        yield env
        return
    throwaway = ThrowawayDatabase(tmp_path_factory.mktemp("mariadb"))
    throwaway.start()
    yield throwaway.env
    throwaway.stop()


@pytest.fixture
def own_database(tmp_path) -> ThrowawayDatabase:
    """A database server for one test, which may stop, restart or reconfigure it."""
    own = ThrowawayDatabase(tmp_path / "own-database")
    own.start()
    yield own
    if own.process.poll() is None:
        own.stop()


def run_python(*args: str, **env: str) -> subprocess.CompletedProcess:
    """Run `python ARGS` in the project directory with extra environment variables."""
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )


def connect_kwargs(database: dict[str, str]) -> dict:
    """MySQLdb.connect arguments for the database described by MYSQL_* variables."""
    return {
        "host": database["MYSQL_HOST"],
        "port": int(database["MYSQL_PORT"]),
        "user": database["MYSQL_USER"],
        "password": database["MYSQL_PASSWORD"],
        "database": database["MYSQL_DATABASE"],
        "charset": "utf8mb4",
    }


def sql(database: dict[str, str], query: str, params: tuple = ()) -> list[tuple]:
    """Run one statement straight against the test database (autocommit)."""
    connection = MySQLdb.connect(**connect_kwargs(database), autocommit=True)
    try:
        cursor = connection.cursor()
        cursor.execute(query, params or None)
        return list(cursor.fetchall())
    finally:
        connection.close()


class LedgerProcess:
    """A server process (by default `python -W error server.py`) on a free port."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        command: list[str] | None = None,
        port: int | None = None,
        ready: bool = True,
    ) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.env = {"THRIFT_HOST": "127.0.0.1", **os.environ, **env, "THRIFT_PORT": str(self.port)}
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command or [sys.executable, "-W", "error", "server.py"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if ready:  # a plain ping answers (not so for a TLS server)
            wait_for(self._answers, 30, "the Ledger server to start")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
        try:
            with self.client(timeout=1, retries=0) as client:
                return client.ping() == "pong"
        except ServerUnreachable:
            return False

    def client(self, timeout: float = 10, **options) -> LedgerClient:
        return LedgerClient(f"127.0.0.1:{self.port}", timeout=timeout, **options)

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self.process.wait(timeout)


@pytest.fixture
def start_ledger(database, tmp_path):
    """Start a dedicated server: start_ledger(THRIFT_WORKERS="2", ..., port=N)."""
    started = []

    def start(port: int | None = None, ready: bool = True, **env: str) -> LedgerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        process = LedgerProcess({**database, **env}, log, port=port, ready=ready)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def ledger(database, tmp_path_factory):
    """One server shared by the tests that do not stop or reconfigure it."""
    process = LedgerProcess(database, tmp_path_factory.mktemp("ledger") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def client(ledger):
    with ledger.client() as client:
        yield client


@pytest.fixture
def locked_account(database, client):
    """An account whose row a separate transaction holds locked until release()."""
    account = client.create_account("locked").id
    connection = MySQLdb.connect(**connect_kwargs(database))
    cursor = connection.cursor()
    cursor.execute("BEGIN")
    cursor.execute("SELECT balance FROM accounts WHERE id = %s FOR UPDATE", (account,))

    def lock_waits() -> bool:
        """True once the server's transaction is blocked on that row."""
        waiting = sql(
            database,
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE %s",
            ("SELECT balance, status FROM accounts WHERE id = % FOR UPDATE",),
        )
        return waiting[0][0] > 0

    yield account, lock_waits, connection.commit
    connection.close()
