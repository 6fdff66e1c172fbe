"""Fixtures of the checks that hold for any service made from this template.

They read the service from `service.thrift` (the one that extends the kit's
BaseService) and start `server.py` with a PooledClient of it, so they need
no edit when the Ledger example is replaced.
"""

from functools import partial

import pytest

from helpers.contract import service_in
from helpers.processes import ROOT, ServerProcess, dedicated_servers, shared_server
from servicekit.client import PooledClient

SERVICE = service_in(ROOT / "service.thrift")


def service_process(env: dict[str, str], log_path, **options) -> ServerProcess:
    return ServerProcess("server.py", partial(PooledClient, SERVICE), env, log_path, **options)


@pytest.fixture(scope="session")
def database(database_server) -> dict[str, str]:
    return database_server.database("template_test")


@pytest.fixture(scope="session")
def server(database, tmp_path_factory) -> ServerProcess:
    """`python server.py`, shared by the checks that do not stop or reconfigure it."""
    with shared_server(service_process, database, tmp_path_factory.mktemp("service")) as process:
        yield process


@pytest.fixture
def start_server(database, tmp_path):
    """Start a dedicated `python server.py`: start_server(**env)."""
    with dedicated_servers(service_process, database, tmp_path) as start:
        yield start
