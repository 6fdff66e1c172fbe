"""The suite as a developer runs it: from a shell that exports settings, and on MYSQL_HOST's database server."""

import subprocess
from pathlib import Path

from helpers.processes import run_python
from tools.throwaway_db import free_port


def pytest_run(basetemp: Path, *tests: str, **env: str) -> subprocess.CompletedProcess:
    """`pytest TESTS` in one process, from a shell that exports `env`."""
    return run_python("-m", "pytest", "-n", "0", "-p", "no:cacheprovider", f"--basetemp={basetemp}", *tests, **env)


def test_a_setting_the_developers_shell_exports_reaches_no_client_the_tests_run(tmp_path):
    # The README says to export settings for local runs; a value every client refuses shows whether one read it.
    result = pytest_run(
        tmp_path,
        "tests/servicekit/test_cli_process.py::test_unreachable_server_is_one_line_and_status_8",  # client.py's process
        "tests/servicekit/test_cli.py::test_a_bad_argument_is_one_line_and_status_2",  # CommandLine.main, in the tests'
        CLIENT_TIMEOUT="soon",
        THRIFT_HOSTS="elsewhere",  # almost a setting: client.py would warn of it on stderr
    )
    assert result.returncode == 0, result.stdout


def test_a_database_server_that_refuses_the_suite_stops_it_in_one_line(tmp_path):
    port = free_port()
    result = pytest_run(tmp_path, "tests/servicekit/test_idempotency.py", MYSQL_HOST="127.0.0.1", MYSQL_PORT=str(port))
    assert result.returncode == 2
    # "Can't connect to server on" from MariaDB's client library, "Can't connect to MySQL server on" from MySQL's.
    refused = f"Exit: cannot use MYSQL_HOST's database server (127.0.0.1:{port} as root): Can't connect to "
    assert result.stderr.startswith(refused) and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stdout
