"""Fixtures of the service's own tests (the Ledger example): `python -W error server.py` and LedgerClient, for real.

Servers run on a fresh free port each, against the `ledger_test` database
of the shared test server (tests/conftest.py).
"""

import pytest

from client import LedgerClient
from helpers.processes import ServerProcess, dedicated_servers, shared_server


def ledger_process(env: dict[str, str], log_path, **options) -> ServerProcess:
    return ServerProcess("server.py", LedgerClient, env, log_path, **options)


@pytest.fixture(scope="session")
def database(database_server) -> dict[str, str]:
    return database_server.database("ledger_test")


@pytest.fixture
def start_ledger(database, tmp_path):
    """Start a dedicated server: start_ledger(THRIFT_WORKERS="2", ..., port=N)."""
    with dedicated_servers(ledger_process, database, tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def ledger(database, tmp_path_factory) -> ServerProcess:
    """One server shared by the tests that do not stop or reconfigure it."""
    with shared_server(ledger_process, database, tmp_path_factory.mktemp("ledger")) as process:
        yield process


@pytest.fixture
def client(ledger) -> LedgerClient:
    with ledger.client() as client:
        yield client
