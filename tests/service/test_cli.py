"""client.py as a person or a script uses it: output, errors, exit statuses."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from thriftpy2.thrift import TApplicationException

from helpers.processes import ROOT, run_python
from helpers.wire import FixedReplyServer, exception_reply
from servicekit.client import new_request_id
from tools.throwaway_db import free_port, wait_for


def cli(port: int, *args: str) -> subprocess.CompletedProcess:
    return run_python("client.py", "--servers", f"127.0.0.1:{port}", *args)


def cli_json(port: int, *args: str) -> dict:
    result = cli(port, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_command_succeeds_against_the_server(ledger):
    port = ledger.port
    assert cli(port, "ping").stdout == "pong\n"
    assert cli_json(port, "health") == {"serving": True, "database": True, "version": "1.1.0"}
    alice = cli_json(port, "create-account", "Alice 🦊")
    bob = cli_json(port, "create-account", "Bob")
    assert alice["owner"] == "Alice 🦊" and alice["balance"] == 0
    assert cli_json(port, "deposit", str(alice["id"]), "900")["amount"] == 900
    assert cli_json(port, "withdraw", str(alice["id"]), "100")["to_account_id"] == 0
    assert cli_json(port, "transfer", str(alice["id"]), str(bob["id"]), "300")["from_account_id"] == alice["id"]
    assert cli_json(port, "get-account", str(alice["id"]))["balance"] == 500
    transfers = cli_json(port, "list-transfers", str(alice["id"]), "--limit", "2")
    assert [t["amount"] for t in transfers["transfers"]] == [300, 100] and transfers["next_cursor"]
    rest = cli_json(port, "list-transfers", str(alice["id"]), "--cursor", transfers["next_cursor"])
    assert [t["amount"] for t in rest["transfers"]] == [900] and rest["next_cursor"] == ""
    assert cli_json(port, "list-accounts", "--limit", "1000")["next_cursor"] == ""
    cli_json(port, "withdraw", str(bob["id"]), "300")
    assert cli_json(port, "close-account", str(bob["id"]))["status"] == 2


def test_human_output_is_a_table(ledger):
    created = cli(ledger.port, "create-account", "Table Person")
    assert created.returncode == 0
    header, row = created.stdout.splitlines()
    assert header.split() == ["ID", "OWNER", "BALANCE", "STATUS", "CREATED", "(UTC)"]
    assert "Table Person" in row and " OPEN " in row
    page = cli(ledger.port, "list-accounts", "--limit", "1").stdout
    assert page.splitlines()[0].startswith("ID") and "next cursor: " in page


def test_a_table_lines_up_on_a_terminal_with_wide_characters(ledger):
    cli_json(ledger.port, "create-account", "李小龍 🦄 in a table")
    cli_json(ledger.port, "create-account", "Zoe\u0301 in a table")  # e and a combining accent
    rows = cli(ledger.port, "list-accounts", "--limit", "1000").stdout.splitlines()
    balance_column = rows[0].index("BALANCE")
    wide = next(row for row in rows if "李小龍 🦄 in a table" in row)
    accented = next(row for row in rows if "Zoe\u0301 in a table" in row)
    # Three CJK characters and an emoji take two terminal columns each; the accent takes none.
    assert wide.index(" 0 ") + 1 + 4 == balance_column
    assert accented.index(" 0 ") + 1 - 1 == balance_column


def test_request_id_flag_makes_a_write_repeatable(ledger):
    account = cli_json(ledger.port, "create-account", "repeat")["id"]
    first = cli_json(ledger.port, "deposit", str(account), "5", "--request-id", f"cli-repeat-{account}")
    again = cli_json(ledger.port, "deposit", str(account), "5", "--request-id", f"cli-repeat-{account}")
    assert first == again
    assert cli_json(ledger.port, "get-account", str(account))["balance"] == 5


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("get-account", "999999999"), 4, "NotFound: account 999999999 does not exist"),
        (("create-account", "   "), 3, "InvalidArgument: owner must be"),
        (("list-accounts", "--cursor", "forged"), 3, "InvalidArgument: cursor"),
        (("deposit", "1", "0"), 3, "InvalidArgument: amount"),
        (("withdraw", "{account}", "1"), 6, "InsufficientFunds: account {account} has only 0"),
        (("close-account", "{account}", "--request-id", "{creating_request_id}"), 5, "Conflict: request_id"),
    ],
)
def test_service_errors_are_one_line_on_stderr_with_a_distinct_status(ledger, args, status, message):
    request_id = new_request_id()
    account = str(cli_json(ledger.port, "create-account", "errors", "--request-id", request_id)["id"])
    args = [arg.format(account=account, creating_request_id=request_id) for arg in args]
    result = cli(ledger.port, *args)
    assert result.returncode == status, result.stderr
    assert result.stderr.startswith("error: " + message.format(account=account))
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_unreachable_server_is_one_line_and_status_8():
    result = cli(free_port(), "--timeout", "2", "ping")
    assert result.returncode == 8
    assert result.stderr.startswith("error: cannot reach the Ledger server at 127.0.0.1:")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        ("127.0.0.1:9090,", "an empty address in '127.0.0.1:9090,': write host:port[,host:port...]"),
        ("http://127.0.0.1:9090", "not host:port (no scheme or path), as localhost:9090: 'http://127.0.0.1:9090'"),
    ],
)
def test_a_servers_list_that_is_no_list_of_addresses_says_what_it_is(servers, message):
    result = run_python("client.py", "--servers", servers, "ping")
    assert result.returncode == 2
    assert result.stderr == f"error: client.py: argument --servers: {message} (see --help)\n"


def test_a_server_of_another_service_is_one_line_and_status_1():
    other = FixedReplyServer(b"\x00\x00\x00\x05hello")
    try:
        result = cli(other.port, "deposit", "1", "5", "--request-id", "r-1")
    finally:
        other.close()
    assert result.returncode == 1
    assert result.stderr == (
        f"error: no Ledger reply from 127.0.0.1:{other.port} (ProtocolError: No protocol version header): "
        "is it a Ledger server? check --servers; the deposit may have been applied: "
        "repeat it with --request-id r-1 to apply it at most once\n"
    )


def test_a_call_the_server_refuses_as_off_its_idl_says_so_and_nothing_of_having_been_applied():
    why = "argument 'amount' of deposit is i32, but the IDL declares i64"
    drifted = FixedReplyServer(
        exception_reply("deposit", TApplicationException(TApplicationException.PROTOCOL_ERROR, why))
    )
    try:
        result = cli(drifted.port, "deposit", "1", "5")
    finally:
        drifted.close()
    assert result.returncode == 1
    assert result.stderr == f"error: the server refused the call: {why}\n"


def test_a_bad_thrift_host_is_named_as_the_setting_it_is_unless_servers_are_given(ledger):
    result = run_python("client.py", "ping", THRIFT_HOST="no host")
    assert (result.returncode, result.stderr) == (
        2,
        "error: THRIFT_HOST must be a host name or IP address, not 'no host'\n",
    )
    given = run_python("client.py", "--servers", f"127.0.0.1:{ledger.port}", "ping", THRIFT_HOST="no host")
    assert (given.returncode, given.stdout) == (0, "pong\n")


def test_a_missing_tls_file_is_named(tmp_path):
    result = run_python("client.py", "ping", CLIENT_TLS_CA=str(tmp_path / "ca.pem"))
    assert result.returncode == 2
    assert result.stderr == (
        f"error: cannot load the TLS files (CLIENT_TLS_*): {tmp_path / 'ca.pem'}: No such file or directory\n"
    )


def test_a_write_whose_timeout_ran_out_before_it_was_sent_says_nothing_of_having_been_applied(ledger):
    result = cli(ledger.port, "--timeout", "1e-9", "deposit", "1", "5")
    assert result.returncode == 8
    assert result.stderr.startswith("error: cannot reach the Ledger server at") and "applied" not in result.stderr


def test_a_write_no_server_accepted_says_nothing_of_having_been_applied():
    port = free_port()
    result = cli(port, "--timeout", "1", "deposit", "1", "5")
    assert result.returncode == 8
    refused = f"127.0.0.1:{port} ([Errno 111] Connection refused)"
    assert result.stderr == f"error: cannot reach the Ledger server at {refused}\n"  # no "may have been applied"


@pytest.mark.parametrize(
    "args",
    [
        ("deposit", "not-a-number", "5"),
        ("no-such-command",),
        ("deposit", "1", "99999999999999999999"),
        ("get-account", "-9223372036854775809"),
        ("list-accounts", "--limit", "2147483648"),
        ("--timeout", "-1", "ping"),
        ("--timeout", "0", "ping"),
        ("--timeout", "soon", "ping"),
        ("deposit", "1", "5", "--request-id", ""),
        ("--servers", "127.0.0.1:70000", "ping"),
        ("--servers", "127.0.0.1:0", "ping"),
        ("--servers", "::1:9090", "ping"),
        ("--servers", "[db1]:9090", "ping"),
        ("--servers", "a b:9090", "ping"),
        ("--servers", "localhost:\u00b2", "ping"),
        ("deposit", "1", "5_000"),
        ("deposit", "1", "+5"),
        ("deposit", "1", "\u0665"),
        ("--timeout", "\uff15", "ping"),
        ("--timeout", "1_0", "ping"),
    ],
)
def test_every_bad_argument_is_one_line_and_status_2(args):
    result = cli(9, *args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert result.stdout == ""


def test_an_argument_that_is_not_utf_8_is_one_line_and_status_2():
    result = subprocess.run(
        [sys.executable, "client.py", "create-account", b"caf\xe9"], cwd=ROOT, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith(b"error: create-account: argument owner: not valid UTF-8")
    assert result.stderr.count(b"\n") == 1


def test_the_client_does_not_read_the_server_settings(ledger):
    result = run_python("client.py", "--servers", f"127.0.0.1:{ledger.port}", "ping", MYSQL_PORT="abc", DB_POOL="x")
    assert (result.returncode, result.stdout) == (0, "pong\n")


def test_a_misspelled_client_setting_is_warned_of_and_the_call_still_made(ledger):
    result = run_python("client.py", "--servers", f"127.0.0.1:{ledger.port}", "ping", CLIENT_TIMOUT="60")
    assert (result.returncode, result.stdout) == (0, "pong\n")
    assert "warning: CLIENT_TIMOUT is not a setting: did you mean CLIENT_TIMEOUT?\n" in result.stderr


def test_a_bracketed_ipv6_address_is_called(start_ledger):
    server = start_ledger(THRIFT_HOST="::1")
    result = run_python("client.py", "--servers", f"[::1]:{server.port}", "ping")
    assert (result.returncode, result.stdout) == (0, "pong\n")


class SilentServer:
    """Accepts connections and never answers: a hung server."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accepted_one(self) -> bool:
        self.listener.settimeout(0.05)
        try:
            self.accepted.append(self.listener.accept()[0])
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        for sock in [*self.accepted, self.listener]:
            sock.close()


def test_timeout_bounds_the_whole_command_retries_included():
    hung = SilentServer()
    try:
        started = time.monotonic()
        result = cli(hung.port, "--timeout", "2", "ping")
        elapsed = time.monotonic() - started
    finally:
        hung.close()
    assert result.returncode == 8
    assert elapsed < 4  # two seconds, and the interpreter's start


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
    command = [sys.executable, "client.py", "--servers", f"127.0.0.1:{hung.port}", "deposit", "1", "5"]
    caller = subprocess.Popen(
        [*command, "--request-id", "r-9"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(hung.accepted_one, 30, "the call to connect")
        caller.send_signal(signum)
        _, stderr = caller.communicate(timeout=30)
    finally:
        hung.close()
    assert caller.returncode == status
    hint = "the deposit may have been applied: repeat it with --request-id r-9 to apply it at most once"
    assert stderr == f"{message}; {hint}\n"


def test_all_follows_next_cursor_to_the_last_page(ledger):
    for owner in ("page-a", "page-b", "page-c"):
        cli_json(ledger.port, "create-account", owner)
    everything = cli_json(ledger.port, "list-accounts", "--limit", "2", "--all")
    assert everything["next_cursor"] == ""
    one_page = cli_json(ledger.port, "list-accounts", "--limit", "1000")
    assert [a["id"] for a in everything["accounts"]] == [a["id"] for a in one_page["accounts"]]
    table = cli(ledger.port, "list-accounts", "--limit", "2", "--all").stdout
    assert len(table.splitlines()) == len(one_page["accounts"]) + 1 and "next cursor" not in table


def test_servers_flag_accepts_several_addresses_and_rejects_garbage(ledger):
    both = run_python("client.py", "--servers", f"127.0.0.1:{free_port()},127.0.0.1:{ledger.port}", "ping")
    assert (both.returncode, both.stdout) == (0, "pong\n")
    garbage = run_python("client.py", "--servers", "no-port-here", "ping")
    assert garbage.returncode == 2 and "--servers" in garbage.stderr


def test_a_write_without_a_reply_names_the_request_id_that_repeats_it_at_most_once(ledger):
    account = cli_json(ledger.port, "create-account", "unsure")["id"]
    hung = SilentServer()
    try:
        result = cli(hung.port, "--timeout", "1", "deposit", str(account), "5")
    finally:
        hung.close()
    assert result.returncode == 8 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"error: no reply from the Ledger server at 127.0.0.1:{hung.port} (")
    hint = re.search(r"; the deposit may have been applied: repeat it with --request-id (\w+) ", result.stderr)
    for _ in range(2):
        cli_json(ledger.port, "deposit", str(account), "5", "--request-id", hint.group(1))
    assert cli_json(ledger.port, "get-account", str(account))["balance"] == 5


def test_a_request_over_the_size_limit_is_refused_before_anything_is_sent():
    result = cli(free_port(), "create-account", "x" * 70_000)  # nothing listens there
    assert result.returncode == 2
    assert (
        result.stderr
        == "error: the request is 70073 bytes, over the server's limit of 65536 (THRIFT_MAX_MESSAGE_BYTES)\n"
    )


def test_a_client_whose_size_limit_is_above_the_servers_is_told_the_servers_at_once(ledger):
    owner = "x" * 70_000
    result = run_python(
        "client.py", "--servers", f"127.0.0.1:{ledger.port}", "create-account", owner, THRIFT_MAX_MESSAGE_BYTES="200000"
    )
    assert result.returncode == 1
    assert result.stderr == (
        "error: the server refused the call: a request of 70073 bytes, "
        "over the server's maximum of 65536 (THRIFT_MAX_MESSAGE_BYTES)\n"
    )


def test_a_reader_that_stops_early_is_not_an_error_and_the_write_is_done(ledger):
    reader_gone, writer = os.pipe()
    os.close(reader_gone)  # every write to the pipe fails: EPIPE
    try:
        command = [sys.executable, "client.py", "--servers", f"127.0.0.1:{ledger.port}", "create-account", "piped"]
        result = subprocess.run(command, cwd=ROOT, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (0, "")
    owners = [account["owner"] for account in cli_json(ledger.port, "list-accounts", "--limit", "1000")["accounts"]]
    assert "piped" in owners


def test_a_closed_stdout_is_not_an_error_and_the_write_is_done(ledger):
    command = f"exec {sys.executable} client.py --servers 127.0.0.1:{ledger.port} create-account closed >&-"
    result = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")
    owners = [account["owner"] for account in cli_json(ledger.port, "list-accounts", "--limit", "1000")["accounts"]]
    assert "closed" in owners


def test_output_that_cannot_be_written_is_one_line_and_status_1(ledger):
    with open("/dev/full", "w") as full:
        command = [sys.executable, "client.py", "--servers", f"127.0.0.1:{ledger.port}", "ping"]
        result = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "error: cannot write the result (No space left on device); the call itself succeeded\n"


def test_a_terminal_that_cannot_show_an_owner_gets_it_escaped(ledger):
    account = str(cli_json(ledger.port, "create-account", "Zoë 🦄")["id"])
    ascii_only = {"PYTHONIOENCODING": "ascii"}
    shown = run_python("client.py", "--servers", f"127.0.0.1:{ledger.port}", "get-account", account, **ascii_only)
    assert shown.returncode == 0 and "Zo\\xeb \\U0001f984" in shown.stdout
    as_json = run_python(
        "client.py", "--servers", f"127.0.0.1:{ledger.port}", "--json", "get-account", account, **ascii_only
    )
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["owner"] == "Zoë 🦄"
