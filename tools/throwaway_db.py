"""A throwaway MariaDB/MySQL server for the tests and the benchmark.

Starts `mariadbd` (or `mysqld`) from the installed binaries on a free port
with its data in a directory of the caller's; root has no password. Tests
that stop or restart a database use one of these, never a shared server.
`make test` installs the programs (Debian's mariadb-server) when missing.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import MySQLdb

SERVER_PROGRAMS = ("mariadbd", "mysqld")
INSTALL_PROGRAMS = ("mariadb-install-db", "mysql_install_db")
# Debian installs the server in sbin, which a non-root PATH often lacks.
SBIN = ("/usr/sbin", "/usr/local/sbin")


class MissingPrograms(RuntimeError):
    """The database server programs are not installed."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition` until it is true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def server_programs(search_path: str | None = None) -> tuple[str, str]:
    """The database server and its installer, looked for on PATH and in sbin (or on `search_path`).

    MissingPrograms names what is missing and how to install it.
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN]) if search_path is None else search_path
    server = next(filter(None, (shutil.which(name, path=path) for name in SERVER_PROGRAMS)), None)
    install = next(filter(None, (shutil.which(name, path=path) for name in INSTALL_PROGRAMS)), None)
    if not (server and install):
        missing = [names[0] for names, found in ((SERVER_PROGRAMS, server), (INSTALL_PROGRAMS, install)) if not found]
        raise MissingPrograms(
            f"the MariaDB server programs are not installed ({', '.join(missing)} not found): "
            "`make test` installs them (apt-get install mariadb-server), or set MYSQL_HOST to a database you have"
        )
    return server, install


class ThrowawayDatabase:
    """A database server in `directory` with one empty database, `database`."""

    def __init__(self, directory: Path, database: str = "test") -> None:
        self.server, install = server_programs()
        self.directory = directory
        self.port = free_port()
        self.database = database
        self.process: subprocess.Popen | None = None
        self.env = {
            "MYSQL_HOST": "127.0.0.1",
            "MYSQL_PORT": str(self.port),
            "MYSQL_USER": "root",
            "MYSQL_PASSWORD": "",
            "MYSQL_DATABASE": database,
        }
        # Its own temporary directory: installers sharing /tmp at once collide on their temporary tables.
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={directory / 'data'}",
                f"--tmpdir={directory / 'tmp'}",
                "--auth-root-authentication-method=normal",
                *self._user(),
            ],
            check=True,
            capture_output=True,
        )

    def _user(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def start(self, *options: str) -> None:
        """Start the server, with extra mariadbd options if given."""
        self.process = subprocess.Popen(
            [
                self.server,
                "--no-defaults",
                f"--datadir={self.directory / 'data'}",
                f"--tmpdir={self.directory / 'tmp'}",
                f"--socket={self.directory / 'mysqld.sock'}",
                f"--pid-file={self.directory / 'mysqld.pid'}",
                f"--log-error={self.directory / 'error.log'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
                "--innodb-log-file-size=64M",
                "--max-connections=2000",
                *self._user(),
                *options,
            ],
        )
        wait_for(self._answers, 60, "the test database to start")
        self.create(self.database)

    def create(self, database: str) -> dict[str, str]:
        """Create another empty database on this server; its MYSQL_* variables."""
        connection = MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", password="")
        connection.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4")
        connection.close()
        return {**self.env, "MYSQL_DATABASE": database}

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError((self.directory / "error.log").read_text())
        try:
            MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", password="").close()
            return True
        except MySQLdb.OperationalError:
            return False

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
