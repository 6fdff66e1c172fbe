"""The kit's command line, built for the Counters service: errors as one line and an exit status."""

import pytest

from counters import CountersClient, counters_thrift
from helpers.processes import ROOT
from servicekit.cli import CommandLine, i64, string


@pytest.fixture
def counters_cli() -> CommandLine:
    """Counters' command line, giving NotFound no exit status of its own."""
    cli = CommandLine(CountersClient, counters_thrift.Counters, ROOT / "config.env", {}, show=str)
    cli.command("get", "one counter", ("name", string))
    cli.command("add", "add to a counter", ("name", string), ("amount", i64), write=True)
    return cli


def test_a_declared_error_without_a_status_of_its_own_is_one_line_and_status_9(server, counters_cli, capsys):
    assert counters_cli.main(["--servers", f"127.0.0.1:{server.port}", "get", "never added"]) == 9
    assert capsys.readouterr().err == "error: NotFound: no counter named 'never added'\n"


def test_the_kit_errors_have_their_statuses(server, counters_cli, capsys):
    assert counters_cli.main(["--servers", f"127.0.0.1:{server.port}", "add", "cli", "0"]) == 3
    assert capsys.readouterr().err.startswith("error: InvalidArgument: amount must be")


@pytest.mark.parametrize("args", [["add", "x", "1e3"], ["--timeout", "nan", "get", "x"], ["get"]])
def test_a_bad_argument_is_one_line_and_status_2(counters_cli, capsys, args):
    with pytest.raises(SystemExit) as exit_:
        counters_cli.main(args)
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1
