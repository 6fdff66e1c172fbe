"""Fixtures of the service's own tests (the Ledger example): `python -W error server.py` and LedgerClient, for real.

Servers run on a fresh free port each, against the `ledger_test` database
of the shared test server (tests/conftest.py).
"""

import signal

import pytest

from client import LedgerClient
from helpers.processes import ServerProcess


def ledger_process(env: dict[str, str], log_path, **options) -> ServerProcess:
    return ServerProcess("server.py", LedgerClient, env, log_path, **options)


@pytest.fixture(scope="session")
def database(database_server) -> dict[str, str]:
    return database_server.database("ledger_test")


@pytest.fixture
def start_ledger(database, tmp_path):
    """Start a dedicated server: start_ledger(THRIFT_WORKERS="2", ..., port=N)."""
    started = []

    def start(port: int | None = None, ready: bool = True, **env: str) -> ServerProcess:
        process = ledger_process({**database, **env}, tmp_path / f"server-{len(started)}.log", port=port, ready=ready)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def ledger(database, tmp_path_factory) -> ServerProcess:
    """One server shared by the tests that do not stop or reconfigure it."""
    process = ledger_process(database, tmp_path_factory.mktemp("ledger") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def client(ledger) -> LedgerClient:
    with ledger.client() as client:
        yield client
