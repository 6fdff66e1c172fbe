"""Fixtures both parts of the suite share: the database server and the fuzzing budget.

The database server is MYSQL_HOST's (with the other MYSQL_* variables) when the caller sets it; otherwise a
throwaway MariaDB/MySQL server started from the installed binaries. Each part of the suite creates its own
database on it. No other setting the caller's environment holds reaches the code under test.
"""

import os
import uuid
from collections.abc import Iterator

import MySQLdb
import pytest
from hypothesis import settings

from helpers.mysql import connect_kwargs
from helpers.processes import SHELL_NAMES_LEFT_OUT
from tools.throwaway_db import MissingPrograms, ThrowawayDatabase, server_programs

# The fuzz tests' budget, per transport and protocol; a longer run: pytest -k fuzz --hypothesis-profile=long
settings.register_profile("suite", max_examples=1_000, deadline=None)
settings.register_profile("long", max_examples=1_000_000, deadline=None)
settings.load_profile("suite")

# MYSQL_HOST's server, when the caller names one: read before the tests' environment loses every
# setting (without_the_shells_settings).
GIVEN_DATABASE_SERVER = (
    {
        "MYSQL_HOST": os.environ["MYSQL_HOST"],
        "MYSQL_PORT": os.environ.get("MYSQL_PORT", "3306"),
        "MYSQL_USER": os.environ.get("MYSQL_USER", "root"),
        "MYSQL_PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
    }
    if os.environ.get("MYSQL_HOST")
    else None
)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist starts its workers
def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop the run in one line if the database server programs are missing and no MYSQL_HOST is given, or
    MYSQL_HOST's server refuses the suite, rather than with the same traceback for every test that needs a
    database (or, under pytest-xdist, "worker crashed")."""
    if GIVEN_DATABASE_SERVER is None:
        try:
            server_programs()
        except MissingPrograms as error:
            pytest.exit(str(error), returncode=2)
        return
    try:
        MySQLdb.connect(**connect_kwargs({**GIVEN_DATABASE_SERVER, "MYSQL_DATABASE": ""}), connect_timeout=10).close()
    except MySQLdb.OperationalError as error:
        host, port, user = (GIVEN_DATABASE_SERVER[name] for name in ("MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER"))
        pytest.exit(f"cannot use MYSQL_HOST's database server ({host}:{port} as {user}): {error.args[1]}", returncode=2)


class DatabaseServer:
    """Where test databases are created: a throwaway server, or MYSQL_HOST's.

    Each run's databases are its own (their names end with the run's token),
    so a run on MYSQL_HOST's server finds none of the last run's rows; they
    are dropped when the run ends.
    """

    def __init__(self, env: dict[str, str], throwaway: ThrowawayDatabase | None = None) -> None:
        self.env = env
        self.throwaway = throwaway
        self.run = uuid.uuid4().hex[:8]
        self.created: set[str] = set()

    def database(self, name: str) -> dict[str, str]:
        """MYSQL_* variables of this run's database `name`, created empty on first use."""
        name = f"{name}_{self.run}"
        if name not in self.created:
            self._execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            self.created.add(name)
        return {**self.env, "MYSQL_DATABASE": name}

    def drop_all(self) -> None:
        for name in sorted(self.created):
            self._execute(f"DROP DATABASE IF EXISTS `{name}`")

    def _execute(self, statement: str) -> None:
        connection = MySQLdb.connect(**connect_kwargs({**self.env, "MYSQL_DATABASE": ""}))
        try:
            connection.cursor().execute(statement)
        finally:
            connection.close()


@pytest.fixture(scope="session", autouse=True)
def without_the_shells_settings() -> Iterator[None]:
    """In-process code that reads os.environ (CommandLine.main) sees no setting the developer's shell exports,
    as the suite's processes do not (PROJECT_ENV)."""
    with pytest.MonkeyPatch.context() as environment:
        for name in SHELL_NAMES_LEFT_OUT:
            environment.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def database_server(tmp_path_factory) -> DatabaseServer:
    if GIVEN_DATABASE_SERVER:
        server = DatabaseServer(GIVEN_DATABASE_SERVER)
        yield server
        server.drop_all()
        return
    throwaway = start_throwaway(tmp_path_factory.mktemp("mariadb"))
    yield DatabaseServer({k: v for k, v in throwaway.env.items() if k != "MYSQL_DATABASE"}, throwaway)
    throwaway.stop()


def start_throwaway(directory) -> ThrowawayDatabase:
    try:
        throwaway = ThrowawayDatabase(directory, database="scratch")
    except MissingPrograms as error:  # with MYSQL_HOST given: only the tests that stop a database need them
        pytest.skip(str(error))
    throwaway.start()
    return throwaway


@pytest.fixture
def own_database(tmp_path) -> ThrowawayDatabase:
    """A database server for one test, which may stop, restart or reconfigure it."""
    yield from _own_throwaway(tmp_path / "own-database")


@pytest.fixture
def another_database(tmp_path) -> ThrowawayDatabase:
    """A second database server of one test's own (a failover's new primary)."""
    yield from _own_throwaway(tmp_path / "another-database")


def _own_throwaway(directory) -> Iterator[ThrowawayDatabase]:
    own = start_throwaway(directory)
    yield own
    if own.process.poll() is None:
        own.stop()
