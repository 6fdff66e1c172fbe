"""The kit's command line run as a process, as a person or a script runs a copy's client.py.

Exit statuses, one-line errors and the request id of a write whose outcome
is unknown; settings, signals, pipes and terminals. It is the Counters
service's (counters_cli.py), so a copy keeps these tests when it replaces
the example's.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from thriftpy2.thrift import TApplicationException

from counters import counters_thrift
from helpers.processes import PROJECT_ENV, ROOT, run_python
from helpers.wire import FixedReplyServer, SilentServer, exception_reply, framed, reply_bytes
from servicekit.client import new_request_id
from tools.throwaway_db import free_port, wait_for

SCRIPT = "tests/servicekit/counters_cli.py"


def cli(port: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run_python(SCRIPT, "--servers", f"127.0.0.1:{port}", *args, **env)


def total(port: int, name: str) -> int:
    result = cli(port, "--json", "get", name)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["total"]


def test_unreachable_server_is_one_line_and_status_8():
    result = cli(free_port(), "--timeout", "2", "ping")
    assert result.returncode == 8
    assert result.stderr.startswith("error: cannot reach the Counters server at 127.0.0.1:")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_write_no_server_accepted_says_nothing_of_having_been_applied():
    port = free_port()
    result = cli(port, "--timeout", "1", "add", "x", "5")
    assert result.returncode == 8
    refused = f"127.0.0.1:{port} ([Errno 111] Connection refused)"
    assert result.stderr == f"error: cannot reach the Counters server at {refused}\n"  # no "may have been applied"


def test_a_write_without_a_reply_names_the_request_id_that_repeats_it_at_most_once(server):
    name = f"unsure-{new_request_id()}"
    hung = SilentServer()
    try:
        result = cli(hung.port, "--timeout", "1", "add", name, "5")
    finally:
        hung.close()
    assert result.returncode == 8 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no reply from the Counters server at 127.0.0.1:{hung.port} (")
    hint = re.search(r"; the add may have been applied: repeat it with --request-id=(\w+) ", result.stderr)
    for _ in range(2):
        assert cli(server.port, "add", name, "5", "--request-id", hint.group(1)).returncode == 0
    assert total(server.port, name) == 5


def test_the_repeat_a_write_without_a_reply_suggests_pastes_back_when_its_id_starts_with_a_dash(server):
    name, request_id = f"dash-{new_request_id()}", f"-{new_request_id()}"
    hung = SilentServer()
    try:
        result = cli(hung.port, "--timeout", "1", "add", name, "5", f"--request-id={request_id}")
    finally:
        hung.close()
    assert result.returncode == 8
    suggested = re.search(r"repeat it with (.+) to apply it at most once", result.stderr).group(1)
    for _ in range(2):
        assert cli(server.port, "add", name, "5", *shlex.split(suggested)).returncode == 0
    assert total(server.port, name) == 5


def test_a_write_whose_timeout_ran_out_before_it_was_sent_says_nothing_of_having_been_applied(server):
    result = cli(server.port, "--timeout", "1e-9", "add", "x", "5")
    assert result.returncode == 8
    assert result.stderr.startswith("error: cannot reach the Counters server at") and "applied" not in result.stderr


def test_timeout_bounds_the_whole_command_retries_included():
    hung = SilentServer()
    try:
        started = time.monotonic()
        result = cli(hung.port, "--timeout", "2", "ping")
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert result.returncode == 8
    assert result.stderr.startswith(f"error: no reply from the Counters server at 127.0.0.1:{hung.port} (")
    assert elapsed < 5  # two seconds, and the interpreter's start


@pytest.mark.parametrize(
    ("signum", "status", "message"),
    [
        (signal.SIGINT, 130, "error: interrupted"),
        (signal.SIGTERM, 143, "error: terminated"),  # `timeout 5 client.py ...`
    ],
    ids=["Ctrl-C", "SIGTERM"],
)
def test_a_signal_during_a_write_is_one_line_naming_its_request_id(signum, status, message):
    hung = SilentServer()
    command = [sys.executable, SCRIPT, "--servers", f"127.0.0.1:{hung.port}", "add", "x", "5", "--request-id", "r-9"]
    caller = subprocess.Popen(
        command, cwd=ROOT, env=PROJECT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(hung.accepted_one, 30, "the call to connect")
        caller.send_signal(signum)
        _, stderr = caller.communicate(timeout=30)
    finally:
        hung.close()
    assert caller.returncode == status
    hint = "the add may have been applied: repeat it with --request-id=r-9 to apply it at most once"
    assert stderr == f"{message}; {hint}\n"


@pytest.mark.parametrize(
    "args",
    [
        ("add", "x", "not-a-number"),
        ("no-such-command",),
        ("add", "x", "99999999999999999999"),
        ("add", "x", "-9223372036854775809"),
        ("list-counters", "--limit", "2147483648"),
        ("get", "x", "extra"),
        ("--timeout", "-1", "ping"),
        ("--timeout", "0", "ping"),
        ("--timeout", "soon", "ping"),
        ("--timeout", "\uff15", "ping"),
        ("--timeout", "1_0", "ping"),
        ("add", "x", "5", "--request-id", ""),
        ("--servers", "127.0.0.1:70000", "ping"),
        ("--servers", "127.0.0.1:0", "ping"),
        ("--servers", "::1:9090", "ping"),
        ("--servers", "[db1]:9090", "ping"),
        ("--servers", "a b:9090", "ping"),
        ("--servers", "localhost:\u00b2", "ping"),
        ("add", "x", "5_000"),
        ("add", "x", "+5"),
        ("add", "x", "\u0665"),
    ],
)
def test_every_bad_argument_is_one_line_and_status_2(args):
    result = cli(9, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_a_value_that_starts_with_a_dash_is_told_how_to_give_it():
    result = cli(9, "get", "-bob")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "error: get: the following arguments are required: name"
        " (-bob was read as an option: a value that starts with - goes after --) (see --help)\n"
    )


@pytest.mark.parametrize("args", [["add", "-5"], ["add", "--"], ["add", "-"], ["--jsn"]])
def test_a_missing_argument_after_values_argparse_took_as_values_gets_no_dash_hint(args):
    # argparse reads a negative number, '-' and whatever follows -- as values: "read as an option" would be untrue;
    # and what is missing before a command is the command, which no value starting with - can be.
    result = cli(9, *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert "the following arguments are required" in result.stderr
    assert "was read as an option" not in result.stderr


@pytest.mark.parametrize("option", ["--json", "--timeout 5", "--servers=127.0.0.1:9"])
def test_a_global_option_after_the_command_is_refused_saying_where_it_goes(option):
    result = cli(9, "get", "x", *option.split())
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: counters_cli.py: unrecognized arguments: {option} "
        "(--servers, --timeout, --json go before the command) (see --help)\n"
    )


@pytest.mark.parametrize("request_id", ["a b", "x" * 65, "caf\u00e9", " "])
def test_a_request_id_the_server_would_refuse_is_a_usage_error_and_nothing_is_sent(server, request_id):
    result = cli(server.port, "add", f"bad-id-{new_request_id()}", "5", "--request-id", request_id)
    assert result.returncode == 2  # not the server's InvalidArgument, 3
    assert result.stderr == (
        f"error: add: argument --request-id: {request_id!r} is not 1 to 64 characters of A-Z a-z 0-9 . _ : - "
        "(see --help)\n"
    )


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ("127.0.0.1:9090,", "an empty address in '127.0.0.1:9090,': write host:port[,host:port...]"),
        ("http://127.0.0.1:9090", "not host:port (no scheme or path), as localhost:9090: 'http://127.0.0.1:9090'"),
        ("no-port-here", "no port: write host:port, as localhost:9090: 'no-port-here'"),
        ("[::1]", "no port: write [address]:port, as [::1]:9090: '[::1]'"),
        ("a:9090 b:9090", "a space in an address (servers are separated by commas, as a:9090,b:9090): 'a:9090 b:9090'"),
    ],
)
def test_a_servers_list_that_is_no_list_of_addresses_says_what_it_is(servers, message):
    result = run_python(SCRIPT, "--servers", servers, "ping")
    assert result.returncode == 2
    assert result.stderr == f"error: counters_cli.py: argument --servers: {message} (see --help)\n"


def test_an_argument_that_is_not_utf_8_is_one_line_and_status_2():
    command = [sys.executable, SCRIPT, "get", b"caf\xe9"]
    result = subprocess.run(command, cwd=ROOT, env=PROJECT_ENV, capture_output=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(b"error: get: argument name: not valid UTF-8")
    assert result.stderr.count(b"\n") == 1


def test_servers_flag_accepts_several_addresses(server):
    both = run_python(SCRIPT, "--servers", f"127.0.0.1:{free_port()},127.0.0.1:{server.port}", "ping")
    assert (both.returncode, both.stdout) == (0, "pong\n")


def test_a_bracketed_ipv6_address_is_called(start_server):
    server = start_server(THRIFT_HOST="::1")
    result = run_python(SCRIPT, "--servers", f"[::1]:{server.port}", "ping")
    assert (result.returncode, result.stdout) == (0, "pong\n")


def test_the_client_does_not_read_the_server_settings(server):
    result = cli(server.port, "ping", MYSQL_PORT="abc", DB_POOL="x")
    assert (result.returncode, result.stdout) == (0, "pong\n")


def test_a_misspelled_client_setting_is_warned_of_and_the_call_still_made(server):
    result = cli(server.port, "ping", CLIENT_TIMOUT="60")
    assert (result.returncode, result.stdout) == (0, "pong\n")
    assert "warning: CLIENT_TIMOUT is not a setting: did you mean CLIENT_TIMEOUT?\n" in result.stderr


def test_a_bad_thrift_host_is_named_as_the_setting_it_is_unless_servers_are_given(server):
    result = run_python(SCRIPT, "ping", THRIFT_HOST="no host")
    assert result.returncode == 2
    assert result.stderr == "error: THRIFT_HOST must be a host name or IP address, not 'no host'\n"
    given = cli(server.port, "ping", THRIFT_HOST="no host")
    assert (given.returncode, given.stdout) == (0, "pong\n")


def test_a_missing_tls_file_is_named(tmp_path):
    result = run_python(SCRIPT, "ping", CLIENT_TLS_CA=str(tmp_path / "ca.pem"))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot load the TLS files (CLIENT_TLS_*): {tmp_path / 'ca.pem'}: No such file or directory\n"
    )


def test_a_server_of_something_else_is_one_line_and_status_1():
    other = FixedReplyServer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        result = cli(other.port, "add", "x", "5", "--request-id", "r-1")
    finally:
        other.close()
    assert result.returncode == 1
    assert result.stderr == (
        f"error: no Counters reply from 127.0.0.1:{other.port} (TProtocolException: a reply that starts "
        "b'HTTP/1.1 400', not framed binary Thrift): is it a Counters server? check --servers; "
        "the add may have been applied: repeat it with --request-id=r-1 to apply it at most once\n"
    )


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["table", "json"])
def test_a_reply_whose_string_is_not_utf_8_is_one_line_and_status_1(json_flag):
    addition = counters_thrift.Addition(id=1, name="NAME", amount=5, total=5, request_id="r-2")
    reply = reply_bytes(counters_thrift.Counters, "add", addition).replace(b"NAME", b"N\xffME")
    other = FixedReplyServer(framed(reply))
    try:
        result = cli(other.port, *json_flag, "add", "x", "5", "--request-id", "r-2")
    finally:
        other.close()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"error: no Counters reply from 127.0.0.1:{other.port} (add()'s reply.name is not valid UTF-8 text): "
        "is it a Counters server? check --servers; "
        "the add may have been applied: repeat it with --request-id=r-2 to apply it at most once\n"
    )


def test_all_takes_a_page_that_leaves_its_list_out_for_an_empty_one():
    other = FixedReplyServer(
        framed(reply_bytes(counters_thrift.Counters, "list_counters", counters_thrift.CounterPage(next_cursor="")))
    )
    try:
        result = cli(other.port, "--json", "list-counters", "--all")
    finally:
        other.close()
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {"counters": [], "next_cursor": ""}


def test_all_whose_timeout_runs_out_between_pages_says_so_not_that_the_server_is_unreachable():
    endless = counters_thrift.CounterPage(
        counters=[counters_thrift.Counter(id=1, name="a", total=1)], next_cursor="more"
    )
    other = FixedReplyServer(framed(reply_bytes(counters_thrift.Counters, "list_counters", endless)))
    try:
        result = cli(other.port, "--timeout", "0.5", "list-counters", "--all")
    finally:
        other.close()
    assert (result.returncode, result.stdout) == (8, "")
    assert re.fullmatch(
        r"error: --timeout 0.5 s ran out after (1 page|\d+ pages) \(--all\): raise it to list them all\n", result.stderr
    )


def test_a_call_the_server_refuses_as_off_its_idl_says_so_and_nothing_of_having_been_applied():
    why = "argument 'amount' of add is i32, but the IDL declares i64"
    refusal = TApplicationException(TApplicationException.PROTOCOL_ERROR, why)
    drifted = FixedReplyServer(exception_reply("add", refusal))
    try:
        result = cli(drifted.port, "add", "x", "5")
    finally:
        drifted.close()
    assert result.returncode == 1
    assert result.stderr == f"error: the server refused the call: {why}\n"


def test_a_request_over_the_size_limit_is_refused_before_anything_is_sent():
    result = cli(free_port(), "add", "x" * 70_000, "1")  # nothing listens there
    assert result.returncode == 2
    assert re.fullmatch(
        r"error: the request is 700\d\d bytes, over the server's limit of 65536 \(THRIFT_MAX_MESSAGE_BYTES\)\n",
        result.stderr,
    )


def test_a_client_whose_size_limit_is_above_the_servers_is_told_the_servers_at_once(server):
    result = cli(server.port, "add", "x" * 70_000, "1", THRIFT_MAX_MESSAGE_BYTES="200000")
    assert result.returncode == 1
    assert re.fullmatch(
        r"error: the server refused the call: a request of 700\d\d bytes, "
        r"over the server's maximum of 65536 \(THRIFT_MAX_MESSAGE_BYTES\)\n",
        result.stderr,
    )


def test_a_reader_that_stops_early_is_not_an_error_and_the_write_is_done(server):
    name = f"piped-{new_request_id()}"
    reader_gone, writer = os.pipe()
    os.close(reader_gone)  # every write to the pipe fails: EPIPE
    try:
        command = [sys.executable, SCRIPT, "--servers", f"127.0.0.1:{server.port}", "add", name, "3"]
        result = subprocess.run(
            command, cwd=ROOT, env=PROJECT_ENV, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (0, "")
    assert total(server.port, name) == 3


def test_a_closed_stdout_is_not_an_error_and_the_write_is_done(server):
    name = f"closed-{new_request_id()}"
    command = f"exec {sys.executable} {SCRIPT} --servers 127.0.0.1:{server.port} add {name} 4 >&-"
    result = subprocess.run(command, shell=True, cwd=ROOT, env=PROJECT_ENV, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    assert total(server.port, name) == 4


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"], ids=["closed", "full"])
def test_an_error_stderr_cannot_take_keeps_its_status_and_stays_off_stdout(server, redirect):
    command = f"exec {sys.executable} {SCRIPT} --servers 127.0.0.1:{server.port} get never-added {redirect}"
    result = subprocess.run(command, shell=True, cwd=ROOT, env=PROJECT_ENV, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (9, "")  # NotFound's status; stdout holds only data


def test_output_that_cannot_be_written_is_one_line_and_status_1(server):
    with open("/dev/full", "w") as full:
        command = [sys.executable, SCRIPT, "--servers", f"127.0.0.1:{server.port}", "ping"]
        result = subprocess.run(
            command, cwd=ROOT, env=PROJECT_ENV, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert result.returncode == 1
    assert result.stderr == "error: cannot write the result (No space left on device); the call itself succeeded\n"


def test_a_terminal_that_cannot_show_a_name_gets_it_escaped(server):
    name = f"Zoë 🦄 {new_request_id()}"
    assert cli(server.port, "add", name, "1").returncode == 0
    shown = cli(server.port, "get", name, PYTHONIOENCODING="ascii")
    assert shown.returncode == 0 and "Zo\\xeb \\U0001f984" in shown.stdout
    as_json = cli(server.port, "--json", "get", name, PYTHONIOENCODING="ascii")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["name"] == name
