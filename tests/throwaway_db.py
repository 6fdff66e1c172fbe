"""A throwaway MariaDB/MySQL server for tests and bench.py, and small helpers.

Starts `mariadbd` from the installed binaries on a free port with its data in
a directory of the caller's; root has no password. Tests that stop or restart
a database use one of these, never a shared server.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import MySQLdb


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ThrowawayDatabase:
    """A database server in `directory` with one empty database, `database`."""

    def __init__(self, directory: Path, database: str = "ledger_test") -> None:
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
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={directory / 'data'}",
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
        server = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen(
            [
                server,
                "--no-defaults",
                f"--datadir={self.directory / 'data'}",
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
        connection = MySQLdb.connect(host="127.0.0.1", port=self.port, user="root", password="")
        connection.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET utf8mb4")
        connection.close()

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
