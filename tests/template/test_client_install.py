"""client.py needs neither MySQL nor a compiler: requirements-client.txt is all it takes."""

import pytest

from helpers.processes import ROOT, run_python
from tools.throwaway_db import MissingPrograms, server_programs

WITHOUT_MYSQL = (
    "import runpy, sys; sys.modules['MySQLdb'] = sys.modules['dbutils'] = None; "
    "sys.argv = ['client.py', *sys.argv[1:]]; runpy.run_path('client.py', run_name='__main__')"
)


def test_client_py_runs_where_mysqlclient_cannot_be_imported(server):
    result = run_python("-c", WITHOUT_MYSQL, "--servers", server.address, "ping")
    assert (result.returncode, result.stdout, result.stderr) == (0, "pong\n", "")


def test_the_client_requirements_hold_no_mysql_and_no_compiled_database_driver():
    pins = [line.split("==")[0].lower() for line in (ROOT / "requirements-client.txt").read_text().splitlines()]
    assert "thriftpy2" in pins and "python-dotenv" in pins
    assert not {"mysqlclient", "dbutils", "prometheus_client"} & set(pins)


def test_a_machine_without_the_database_server_programs_gets_one_line_naming_them():
    with pytest.raises(MissingPrograms) as error:
        server_programs(search_path="/nonexistent")
    message = str(error.value)
    assert message.count("\n") == 0
    assert "mariadbd, mariadb-install-db not found" in message and "apt-get install mariadb-server" in message
