"""Fixtures of the kit's tests: the Counters test service (counters.py) on real processes.

Every server runs as `python -W error tests/servicekit/counters.py` on a
fresh free port, against the `kit_test` database of the shared test server
or against a database of its own (own_database).
"""

import signal
import uuid

import pytest

from counters import CountersClient
from counters_testing import counters_process
from helpers.mysql import RowLock, statement_waits
from helpers.processes import ServerProcess


@pytest.fixture(scope="session")
def database(database_server) -> dict[str, str]:
    return database_server.database("kit_test")


@pytest.fixture
def start_server(database, tmp_path):
    """Start a dedicated server: start_server(THRIFT_WORKERS="2", ..., port=N, ready=False)."""
    started = []

    def start(port: int | None = None, ready: bool = True, **env: str) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        process = counters_process({**database, **env}, log, port=port, ready=ready)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def server(database, tmp_path_factory) -> ServerProcess:
    """One server shared by the tests that do not stop or reconfigure it."""
    process = counters_process(database, tmp_path_factory.mktemp("counters") / "server.log")
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture
def client(server) -> CountersClient:
    with server.client() as client:
        yield client


@pytest.fixture
def locked_counter(database, client):
    """A counter whose row a separate transaction holds locked: (name, add_waits(), release())."""
    name = f"locked-{uuid.uuid4().hex}"
    client.add(name, 1)
    lock = RowLock(database, "SELECT total FROM counters WHERE name = %s FOR UPDATE", (name,))
    yield name, lambda: statement_waits(database, "INSERT INTO counters"), lock.release
    lock.close()
