"""Fixtures of the kit's tests: the Counters test service (counters.py) on real processes.

Every server runs as `python -W error tests/servicekit/counters.py` on a
fresh free port, against the `kit_test` database of the shared test server
or against a database of its own (own_database).
"""

import pytest

from counters import CountersClient
from counters_testing import counters_process
from helpers.processes import ServerProcess, dedicated_servers, shared_server


@pytest.fixture(scope="session")
def database(database_server) -> dict[str, str]:
    return database_server.database("kit_test")


@pytest.fixture
def start_server(database, tmp_path):
    """Start a dedicated server: start_server(THRIFT_WORKERS="2", ..., port=N, ready=False)."""
    with dedicated_servers(counters_process, database, tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def server(database, tmp_path_factory) -> ServerProcess:
    """One server shared by the tests that do not stop or reconfigure it."""
    # Every hostile-input case looks for its own log line: no cap on them here (test_observability checks it).
    env = {**database, "LOG_CLIENT_ERRORS_PER_10S": "1000000"}
    with shared_server(counters_process, env, tmp_path_factory.mktemp("counters")) as process:
        yield process


@pytest.fixture
def client(server) -> CountersClient:
    with server.client() as client:
        yield client
