"""Fixtures both parts of the suite share: the database server and the fuzzing budget.

The database server is the one named by MYSQL_HOST (and the other MYSQL_*
variables) when the caller sets it; otherwise a throwaway MariaDB/MySQL
server is started from the installed binaries in a temporary directory.
Each part of the suite creates its own database on it.
"""

import os

import MySQLdb
import pytest
from hypothesis import settings

from helpers.mysql import connect_kwargs
from tools.throwaway_db import MissingPrograms, ThrowawayDatabase

# The fuzz tests' budget, per transport and protocol; a longer run: pytest -k fuzz --hypothesis-profile=long
settings.register_profile("suite", max_examples=2_500, deadline=None)
settings.register_profile("long", max_examples=1_000_000, deadline=None)
settings.load_profile("suite")


class DatabaseServer:
    """Where test databases are created: a throwaway server, or MYSQL_HOST's."""

    def __init__(self, env: dict[str, str], throwaway: ThrowawayDatabase | None = None) -> None:
        self.env = env
        self.throwaway = throwaway

    def database(self, name: str) -> dict[str, str]:
        """MYSQL_* variables of the database `name`, created empty if it is not there."""
        connection = MySQLdb.connect(**{**connect_kwargs({**self.env, "MYSQL_DATABASE": ""})})
        connection.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4")
        connection.close()
        return {**self.env, "MYSQL_DATABASE": name}


@pytest.fixture(scope="session")
def database_server(tmp_path_factory) -> DatabaseServer:
    if os.environ.get("MYSQL_HOST"):
        yield DatabaseServer(
            {
                "MYSQL_HOST": os.environ["MYSQL_HOST"],
                "MYSQL_PORT": os.environ.get("MYSQL_PORT", "3306"),
                "MYSQL_USER": os.environ.get("MYSQL_USER", "root"),
                "MYSQL_PASSWORD": os.environ.get("MYSQL_PASSWORD", ""),
            }
        )
        return
    throwaway = start_throwaway(tmp_path_factory.mktemp("mariadb"))
    yield DatabaseServer({k: v for k, v in throwaway.env.items() if k != "MYSQL_DATABASE"}, throwaway)
    throwaway.stop()


def start_throwaway(directory) -> ThrowawayDatabase:
    try:
        throwaway = ThrowawayDatabase(directory, database="scratch")
    except MissingPrograms as error:
        pytest.exit(str(error), returncode=2)
    throwaway.start()
    return throwaway


@pytest.fixture
def own_database(tmp_path) -> ThrowawayDatabase:
    """A database server for one test, which may stop, restart or reconfigure it."""
    own = start_throwaway(tmp_path / "own-database")
    yield own
    if own.process.poll() is None:
        own.stop()
