"""`python server.py` refusing to start: in one line, and before its migrations change the schema; and
client.py refusing the same config.env.

Generic over the service: it copies the service's files and edits its IDL or config.env.
"""

import re
import shutil
import socket
from pathlib import Path

import pytest

from helpers.mysql import sql
from helpers.processes import ROOT, run_python


@pytest.fixture
def fresh_database(database_server) -> dict[str, str]:
    database = database_server.database("template_startup")
    for (table,) in sql(database, "SHOW TABLES"):  # the database is this run's; another test may have migrated it
        sql(database, f"DROP TABLE `{table}`")
    return database


def copy_service(directory: Path) -> None:
    """The service's scripts, IDL, config.env and migrations in `directory`, to change one of them there."""
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*.thrift"), ROOT / "config.env"]:
        shutil.copy(path, directory / path.name)
    shutil.copytree(ROOT / "migrations", directory / "migrations")
    (directory / "servicekit").symlink_to(ROOT / "servicekit")  # service.thrift includes its base.thrift


def test_a_handler_the_idl_outgrew_stops_the_server_before_any_migration_runs(fresh_database, tmp_path):
    # A deploy whose service.thrift has a method its handler lacks must not migrate, then crash-loop.
    copy_service(tmp_path)
    idl = tmp_path / "service.thrift"
    new_method = r"\1\n  string audit() throws (1: base.Unavailable unavailable),"
    idl.write_text(re.sub(r"(service \w+ extends base\.BaseService \{)", new_method, idl.read_text(), count=1))

    result = run_python("server.py", cwd=tmp_path, **fresh_database)

    assert result.returncode == 2
    last_line = result.stderr.splitlines()[-1]
    assert last_line.startswith("error: service.thrift and the handler disagree: ")
    assert last_line.endswith("Handler has no method audit")
    assert sql(fresh_database, "SHOW TABLES") == []


@pytest.mark.parametrize("command", [["server.py"], ["client.py", "ping"]], ids=["server", "client"])
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("THRIFT_PORT", "THRIFT_PORT has no value: write THRIFT_PORT=VALUE"),
        ('THRIFT_PORT="19391', "THRIFT_PORT: not NAME=value (a quote left open?)"),
    ],
    ids=["no value", "unclosed quote"],
)
def test_a_config_env_line_without_a_value_stops_server_and_client_naming_it(tmp_path, command, line, message):
    # python-dotenv would skip the line: both would use port 9090, the default.
    copy_service(tmp_path)
    config = tmp_path / "config.env"
    lines = config.read_text().splitlines()
    number = next(n for n, text in enumerate(lines, 1) if text.startswith("THRIFT_PORT="))
    lines[number - 1] = line
    config.write_text("\n".join(lines) + "\n")

    result = run_python(*command, cwd=tmp_path)

    assert (result.returncode, result.stderr) == (2, f"error: config.env line {number}: {message}\n")


def test_a_taken_port_stops_the_server_before_any_migration_runs(fresh_database):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = run_python("server.py", **fresh_database, THRIFT_HOST="127.0.0.1", THRIFT_PORT=str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" not in result.stderr
    assert sql(fresh_database, "SHOW TABLES") == []


@pytest.mark.parametrize("arguments", [["--port", "9091"], ["9091"]])
def test_arguments_are_refused_with_where_settings_come_from(arguments, fresh_database):
    result = run_python("server.py", *arguments, **fresh_database)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: python server.py\nTakes no arguments: settings come from config.env")
    assert sql(fresh_database, "SHOW TABLES") == []


def test_help_says_where_settings_come_from():
    result = run_python("server.py", "--help")
    assert result.returncode == 0
    assert "THRIFT_PORT=9091 python server.py" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "status"),
    [(["--help"], 0), (["migrate", "--help"], 0), (["migrate", "-h"], 0), (["migrate", "now"], 2)],
)
def test_db_py_answers_help_and_refuses_other_arguments(arguments, status, fresh_database):
    result = run_python("db.py", *arguments, **fresh_database)
    assert result.returncode == status
    assert (result.stdout if status == 0 else result.stderr) == "usage: python db.py migrate\n"
    assert sql(fresh_database, "SHOW TABLES") == []


def test_db_py_without_a_database_name_says_so_not_that_another_process_holds_the_lock(fresh_database):
    result = run_python("db.py", "migrate", **{**fresh_database, "MYSQL_DATABASE": ""})
    assert (result.returncode, result.stderr) == (2, "error: MYSQL_DATABASE is empty: write MYSQL_DATABASE=VALUE\n")
