"""client.py as a person or a script uses it: output, errors, exit statuses."""

import json
import subprocess

import pytest

from client import ledger_thrift
from helpers.mysql import sql
from helpers.processes import run_python
from helpers.wire import FixedReplyServer, framed, reply_bytes
from servicekit.client import new_request_id


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


def test_a_table_shows_a_status_or_time_it_cannot_name_as_its_number(ledger, database):
    """An older client.py meets a newer server's status; a time past year 9999 or before year 1: no crash."""
    ids = [cli_json(ledger.port, "create-account", owner)["id"] for owner in ("newer-status", "far-future", "far-past")]
    odd = [(ids[0], 3, 0), (ids[1], 1, 2**63 - 1), (ids[2], 1, -99999999999999)]
    for account, status, created in odd:
        sql(database, "UPDATE accounts SET status = %s, created_at_ms = %s WHERE id = %s", (status, created, account))
    try:
        one = cli(ledger.port, "get-account", str(ids[0]))
        page = cli(ledger.port, "list-accounts", "--all")
    finally:  # the shared server's other tests list every account
        sql(database, "UPDATE accounts SET status = 1, created_at_ms = updated_at_ms WHERE id IN %s", (ids,))
    assert (one.returncode, one.stderr) == (0, "")
    assert one.stdout.splitlines()[1].split() == [str(ids[0]), "newer-status", "0", "3", "1970-01-01", "00:00:00"]
    assert (page.returncode, page.stderr) == (0, "")
    rows = {row.split()[1]: row.split()[2:] for row in page.stdout.splitlines()}
    assert rows["newer-status"] == ["0", "3", "1970-01-01", "00:00:00"]
    assert rows["far-future"] == ["0", "OPEN", "9223372036854775807"]
    assert rows["far-past"] == ["0", "OPEN", "-99999999999999"]


@pytest.mark.parametrize(
    ("args", "reply", "rows"),
    [
        (
            ("get-account", "7"),
            ledger_thrift.Account(id=7, owner="partial"),
            [["7", "partial", "None", "None", "None"]],
        ),
        (("list-transfers", "7"), ledger_thrift.TransferPage(next_cursor=""), []),
    ],
    ids=["an account without its balance, status and times", "a page without its list"],
)
def test_a_table_shows_a_field_the_server_left_out_as_none(args, reply, rows):
    """A Thrift server may leave a field out, and one whose IDL changed a field's type has it skipped: no crash."""
    other = FixedReplyServer(framed(reply_bytes(ledger_thrift.Ledger, args[0].replace("-", "_"), reply)))
    try:
        result = cli(other.port, *args)
    finally:
        other.close()
    assert (result.returncode, result.stderr) == (0, "")
    assert [row.split() for row in result.stdout.splitlines()[1:]] == rows


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


def test_all_follows_next_cursor_to_the_last_page(ledger):
    for owner in ("page-a", "page-b", "page-c"):
        cli_json(ledger.port, "create-account", owner)
    everything = cli_json(ledger.port, "list-accounts", "--limit", "2", "--all")
    assert everything["next_cursor"] == ""
    one_page = cli_json(ledger.port, "list-accounts", "--limit", "1000")
    assert [a["id"] for a in everything["accounts"]] == [a["id"] for a in one_page["accounts"]]
    table = cli(ledger.port, "list-accounts", "--limit", "2", "--all").stdout
    assert len(table.splitlines()) == len(one_page["accounts"]) + 1 and "next cursor" not in table
