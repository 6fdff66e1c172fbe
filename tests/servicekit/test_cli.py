"""The kit's command line, built for the Counters service: errors as one line and an exit status."""

import argparse
import contextlib
import json
from collections.abc import Callable
from typing import ClassVar

import pytest
import thriftpy2
from thriftpy2.thrift import TType

import counters_cli as counters_cli_module
from counters import CountersClient, counters_thrift
from helpers.processes import ROOT
from helpers.wire import ResettingServer, SilentServer
from servicekit.base import BASE_THRIFT
from servicekit.cli import CommandLine, as_dict, i64, idl_type, string, struct_of
from servicekit.client import PooledClient, check_arguments, new_request_id
from servicekit.wire import BINARY

# Another service on the kit, with a write the Counters server does not have.
ELSEWHERE = """include "{base}"
service Elsewhere extends base.BaseService {{ void touch(1: string request_id) throws (1: base.Unavailable u) }}
"""


@pytest.fixture
def counters_cli() -> CommandLine:
    """Counters' command line, giving NotFound no exit status of its own."""
    return counters_cli_module.cli


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


def test_a_write_a_hung_server_never_took_whole_says_nothing_of_having_been_applied(counters_cli, capsys, monkeypatch):
    monkeypatch.setenv("THRIFT_MAX_MESSAGE_BYTES", str(2**30))  # a request longer than the kernel's buffers hold
    hung = SilentServer()
    try:
        status = counters_cli.main(["--servers", f"127.0.0.1:{hung.port}", "--timeout", "1", "add", "x" * 2**25, "5"])
    finally:
        hung.close()
    assert status == 8
    assert capsys.readouterr().err == f"error: cannot reach the Counters server at 127.0.0.1:{hung.port} (timed out)\n"


def test_a_server_of_something_else_that_reset_a_write_says_nothing_of_having_been_applied(
    counters_cli, capsys, monkeypatch
):
    monkeypatch.setenv("THRIFT_MAX_MESSAGE_BYTES", str(2**30))  # a request longer than the kernel's buffers hold
    other = ResettingServer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        status = counters_cli.main(["--servers", f"127.0.0.1:{other.port}", "add", "x" * 2**25, "5"])
    finally:
        other.close()
    assert status == 1
    assert capsys.readouterr().err == (
        f"error: no Counters reply from 127.0.0.1:{other.port} (TProtocolException: a reply that starts "
        "b'HTTP/1.1 400', not framed binary Thrift): is it a Counters server? check --servers\n"
    )


def test_a_server_of_another_service_is_named_as_such_not_as_a_write_that_may_have_applied(server, tmp_path, capsys):
    idl = tmp_path / "elsewhere.thrift"
    idl.write_text(ELSEWHERE.format(base=BASE_THRIFT))
    service = thriftpy2.load(str(idl), module_name="elsewhere_thrift").Elsewhere

    class ElsewhereClient(PooledClient):
        def __init__(self, servers: str, **options) -> None:
            super().__init__(service, servers, **options)

        def touch(self, request_id: str | None = None) -> None:
            return self.call("touch", request_id or new_request_id())

    cli = CommandLine(ElsewhereClient, service, ROOT / "config.env", {}, show=str)
    cli.command("touch", "a write", write=True)
    assert cli.main(["--servers", f"127.0.0.1:{server.port}", "touch"]) == 1
    error = capsys.readouterr().err
    assert error == (
        "error: the server does not serve this call of Elsewhere (unknown method 'touch' of Counters): "
        "check --servers\n"
    )


def test_a_command_that_does_not_fit_its_client_method_is_refused_when_declared(counters_cli):
    with pytest.raises(TypeError, match="command list: CountersClient has no method list"):
        counters_cli.command("list", "counters", page=True)
    with pytest.raises(TypeError, match=r"command get: CountersClient.get takes no \['limit', 'cursor'\]"):
        counters_cli.command("get", "one counter", ("name", string), page=True)


def test_a_command_that_leaves_out_a_parameter_its_client_method_needs_is_refused_when_declared():
    # Declared, it would parse its arguments, then fail in the call with a traceback.
    with pytest.raises(TypeError, match=r"command add: CountersClient.add needs \['amount'\] too"):
        counters_cli_with({}).command("add", "add to a counter", ("name", string), write=True)


def test_a_command_whose_client_method_takes_its_parameters_only_by_position_is_refused_when_declared():
    # The command calls the method with each argument by name: declared, it would fail there with a traceback.
    class PositionalClient(CountersClient):
        def get(self, name: str, /):
            return self.call("get", name)

    cli = CommandLine(PositionalClient, counters_thrift.Counters, ROOT / "config.env", {}, show=str)
    refusal = r"command get: PositionalClient.get takes \['name'\] only by position; the command passes names"
    with pytest.raises(TypeError, match=refusal):
        cli.command("get", "one counter", ("name", string))


def counters_cli_with(exit_statuses: dict) -> CommandLine:
    return CommandLine(CountersClient, counters_thrift.Counters, ROOT / "config.env", exit_statuses, show=str)


@pytest.mark.parametrize(
    ("status", "meaning"), [(0, "ok"), (7, "Unavailable (or health not ok)"), (9, "another declared error")]
)
def test_an_exit_status_of_the_kits_is_refused_for_a_service_error(status, meaning):
    # A script reading 7 would retry a NotFound; reading 0, take it for success.
    with pytest.raises(ValueError) as error:
        counters_cli_with({counters_thrift.NotFound: status})
    assert str(error.value) == f"NotFound cannot exit {status} ({meaning}): give it 4, 6 or 10 to 125"


def test_a_service_error_may_take_4_6_or_10_to_125_and_no_other_status():
    accepted = []
    for status in range(256):
        with contextlib.suppress(ValueError):
            counters_cli_with({counters_thrift.NotFound: status})
            accepted.append(status)
    assert accepted == [4, 6, *range(10, 126)]
    with pytest.raises(ValueError, match=r"NotFound cannot exit 126 \(the shell's\): give it 4, 6 or 10 to 125"):
        counters_cli_with({counters_thrift.NotFound: 126})


@pytest.mark.parametrize("status", ["4", 4.0, True])
def test_an_exit_status_that_is_not_a_whole_number_is_refused_naming_it(status):
    # sys.exit("4") prints 4 and exits 1; sys.exit(4.0) the same; True is 1.
    with pytest.raises(ValueError, match=rf"NotFound's exit status must be a whole number, not {status!r}"):
        counters_cli_with({counters_thrift.NotFound: status})


def test_a_kit_error_keeps_its_exit_status():
    with pytest.raises(ValueError, match="Conflict exits 5, the kit's status for it: leave it out"):
        counters_cli_with({counters_thrift.base.Conflict: 4})


def test_the_help_lists_every_exit_status_in_order(capsys):
    cli = counters_cli_with({counters_thrift.NotFound: 10})
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert help_text.endswith(
        "exit status: 0 ok, 1 internal error, 2 usage, 3 InvalidArgument, 5 Conflict, 7 Unavailable (or health not"
        " ok), 8 server unreachable, 9 another declared error, 10 NotFound, 130 interrupted, 143 terminated"
    )


def test_a_commands_help_says_what_each_argument_takes(capsys):
    cli = counters_cli_with({})
    cli.command("add", "add to a counter", ("name", string), ("amount", i64), write=True)
    cli.command("get", "one counter", ("name", struct_of(counters_thrift.CounterPage)))  # only its help is read
    shown = {}
    for command in ("add", "get"):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        shown[command] = " ".join(capsys.readouterr().out.split())
    assert "name Text (Thrift string: valid UTF-8). amount A whole number from -2**63 to 2**63-1" in shown["add"]
    assert "name A CounterPage as a JSON object of its fields." in shown["get"]


def test_a_service_error_with_a_status_of_its_own_exits_with_it(server, capsys):
    cli = counters_cli_with({counters_thrift.NotFound: 4})
    cli.command("get", "one counter", ("name", string))
    assert cli.main(["--servers", f"127.0.0.1:{server.port}", "get", "never added"]) == 4
    assert capsys.readouterr().err == "error: NotFound: no counter named 'never added'\n"


def test_a_struct_argument_is_written_as_a_json_object_of_its_fields():
    page = struct_of(counters_thrift.CounterPage)(
        '{"counters": [{"id": 1, "name": "a", "total": 2}], "next_cursor": ""}'
    )
    assert page == counters_thrift.CounterPage(
        counters=[counters_thrift.Counter(id=1, name="a", total=2)], next_cursor=""
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{id: 1}", "not a Counter in JSON: Expecting property name enclosed in double quotes: line 1 column 2"),
        ("[1, 2]", "not a Counter in JSON: Counter is a JSON object of its fields"),
        ('{"id": 1, "colour": "red"}', "not a Counter in JSON: Counter has no field 'colour'"),
        ('{"id": "one"}', "not a Counter in JSON: Counter.id must be an int, not str"),
        ('{"total": 9223372036854775808}', "not a Counter in JSON: Counter.total = 9223372036854775808 is outside"),
    ],
)
def test_a_struct_argument_that_is_not_one_says_why(text, message):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        struct_of(counters_thrift.Counter)(text)
    assert str(error.value).startswith(message)


CONTAINERS = thriftpy2.load(str(ROOT / "tests/servicekit/containers.thrift"), module_name="containers_cli_thrift")


def test_json_shows_binary_as_base64_and_structs_inside_a_map_as_objects():
    photo = CONTAINERS.Photo(data=b"\x00\xff", marks={"eye": CONTAINERS.Point(x=1, y=2)}, thumbnails=[b"hi"])
    # What --json prints: json.dumps raised TypeError (a traceback) on the bytes and on the struct in the map.
    assert json.loads(json.dumps(as_dict(photo))) == {
        "data": "AP8=",
        "marks": {"eye": {"x": 1, "y": 2}},
        "thumbnails": ["aGk="],
    }


def test_a_struct_argument_takes_binary_as_base64_text_as_json_shows_it():
    photo = CONTAINERS.Photo(data=b"\x00\xff", marks={"eye": CONTAINERS.Point(x=1, y=2)}, thumbnails=[b"hi"])
    assert struct_of(CONTAINERS.Photo)(json.dumps(as_dict(photo))) == photo


def test_binary_that_is_not_base64_says_so():
    with pytest.raises(argparse.ArgumentTypeError, match="not a Photo in JSON: binary is base64 text, not 'hi!'"):
        struct_of(CONTAINERS.Photo)('{"data": "hi!"}')


# A service taking every other type an argument may have, each given on the command line by name only.
RICH = """include "{base}"
enum Shade {{ LIGHT = 1, DARK = 2 }}
struct Point {{ 1: i32 x, 2: i32 y }}
service Rich extends base.BaseService {{
  void give(1: Shade shade, 2: double ratio, 3: bool flag, 4: binary data, 5: i16 small, 6: byte tiny,
            7: map<i64, Point> points, 8: set<string> tags, 9: list<Shade> shades) throws (1: base.Unavailable u),
  void tally(1: Shade shade, 2: bool include_archived = false, 3: string request_id) throws (1: base.Unavailable u),
  void rank(1: set<string> tags, 2: i32 top = 5, 3: Shade shade = Shade.DARK, 4: double ratio = -1.5,
            5: list<Point> corners = [{{"x": 1, "y": -2}}], 6: map<i64, binary> seeds = {{7: "hi"}},
            7: string note = "") throws (1: base.Unavailable u),
  void skewed(1: i32 first = 1, 2: string second, 3: i32 third = 3) throws (1: base.Unavailable u),
}}
"""
GIVE = ["shade", "ratio", "flag", "data", "small", "tiny", "points", "tags", "shades"]


@pytest.fixture(scope="module")
def rich(tmp_path_factory):
    idl = tmp_path_factory.mktemp("rich") / "rich.thrift"
    idl.write_text(RICH.format(base=BASE_THRIFT))
    return thriftpy2.load(str(idl), module_name="rich_thrift")


@pytest.fixture
def rich_cli(rich) -> CommandLine:
    """The Rich service's command line, whose client checks each call as PooledClient does, then keeps it in
    `client_class.sent` instead of sending it (no server serves Rich)."""

    class RichClient(PooledClient):
        sent: ClassVar[list[tuple[str, tuple]]] = []

        def __init__(self, servers: str, **options) -> None:
            super().__init__(rich.Rich, servers, **options)

        def call(self, method: str, *args: object) -> None:
            check_arguments(method, self._argument_specs[method], args)
            self.sent.append((method, args))

        def give(self, shade, ratio, flag, data, small, tiny, points, tags, shades) -> None:
            return self.call("give", shade, ratio, flag, data, small, tiny, points, tags, shades)

        def tally(self, shade, include_archived, request_id=None) -> None:
            return self.call("tally", shade, include_archived, request_id or new_request_id())

        def rank(self, tags, top=5, shade=2, ratio=-1.5, corners=None, seeds=None, note="") -> None:
            # Python defaults of its own, as a library's caller may want them: the command passes every argument.
            return self.call("rank", tags, top, shade, ratio, corners, seeds, note)

        def skewed(self, first, second, third) -> None:
            return self.call("skewed", first, second, third)

    cli = CommandLine(RichClient, rich.Rich, ROOT / "config.env", {}, show=str)
    cli.command("give", "every type, each argument by its name in the IDL", *GIVE)
    cli.command("tally", "a bool with a default", "shade", "include_archived", write=True)
    cli.command("rank", "defaults of every kind", "tags", "top", "shade", "ratio", "corners", "seeds", "note")
    cli.command("skewed", "a default before an argument without one", "first", "second", "third")
    return cli


def test_an_argument_named_only_takes_its_type_from_the_idl(rich, rich_cli, capsys):
    given = ["DARK", "2.5", "true", "AP8=", "-32768", "127", '{"7": {"x": 1, "y": 2}}', '["a", "b"]', '["LIGHT", 2]']
    assert rich_cli.main(["--servers", "127.0.0.1:1", "give", *given]) == 0
    assert rich_cli.client_class.sent == [
        ("give", (2, 2.5, True, b"\x00\xff", -32768, 127, {7: rich.Point(x=1, y=2)}, {"a", "b"}, [1, 2]))
    ]
    assert capsys.readouterr() == ("", "")  # a void method's success prints nothing


def test_an_argument_named_only_says_its_idl_type_in_the_help(rich_cli, capsys):
    with pytest.raises(SystemExit):
        rich_cli.main(["give", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for help_text in [
        "shade One of LIGHT, DARK (or its number: Shade).",
        "ratio A number, such as 2.5 or -1e3 (Thrift double).",
        "flag true or false (Thrift bool).",
        "data Bytes written as base64 text (Thrift binary).",
        "small A whole number from -32768 to 32767 (Thrift i16).",
        "points A map<i64, Point> as a JSON object.",
        "tags A set<string> as a JSON array.",
        "shades A list<Shade> as a JSON array.",
    ]:
        assert help_text in shown


@pytest.mark.parametrize(
    ("position", "text", "message"),
    [
        (0, "DUSK", "argument shade: not a Shade: 'DUSK' (one of LIGHT, DARK)"),
        (1, "nan", "argument ratio: not a number: 'nan'"),
        (1, "1e999", "argument ratio: not a number: '1e999'"),
        (2, "yes", "argument flag: not true or false: 'yes'"),
        (3, "hi!", "argument data: binary is base64 text, not 'hi!'"),
        (4, "40000", "argument small: 40000 is out of range (-32768 to 32767)"),
        (6, '{"x": {}}', "argument points: not a map<i64, Point> in JSON: map<i64, Point> key must be an int, not str"),
        (6, '{"1": {"z": 1}}', "argument points: not a map<i64, Point> in JSON: Point has no field 'z'"),
        (8, '["DUSK"]', "argument shades: not a list<Shade> in JSON: Shade has no value 'DUSK' (one of LIGHT, DARK)"),
    ],
)
def test_an_argument_named_only_refuses_what_its_idl_type_cannot_hold_in_one_line(
    rich_cli, capsys, position, text, message
):
    given = ["DARK", "2.5", "true", "AP8=", "1", "1", "{}", "[]", "[]"]
    given[position] = text
    with pytest.raises(SystemExit) as exit_:
        rich_cli.main(["--servers", "127.0.0.1:1", "give", *given])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: give: {message} (see --help)\n"
    assert rich_cli.client_class.sent == []


def test_an_argument_named_only_that_the_idl_lacks_is_refused_when_declared(rich_cli):
    refusal = r"command give: the IDL's Rich.give has no argument 'colour' to take its type from: give \('colour'"
    with pytest.raises(TypeError, match=refusal):
        rich_cli.command("give", "every type", *GIVE[:-1], "colour")


@pytest.mark.parametrize(("text", "ratio"), [("-1e3", -1000.0), ("-2.5E-1", -0.25), ("-1.", -1.0)])
def test_a_negative_number_with_an_exponent_is_a_value_not_an_option(rich_cli, text, ratio):
    # As --help's own example, -1e3: argparse took it for an unknown option and shifted the values after it.
    given = ["DARK", text, "true", "AP8=", "1", "1", "{}", "[]", "[]"]
    assert rich_cli.main(["--servers", "127.0.0.1:1", "give", *given]) == 0
    assert rich_cli.client_class.sent[-1][1][1] == ratio


def test_json_nested_too_deeply_is_one_line_not_a_traceback(rich_cli, capsys):
    # 100,000 brackets fit in one command-line word (128 kB); json.loads raised RecursionError.
    given = ["DARK", "2.5", "true", "AP8=", "1", "1", "[" * 100_000, "[]", "[]"]
    with pytest.raises(SystemExit) as exit_:
        rich_cli.main(["--servers", "127.0.0.1:1", "give", *given])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: give: argument points: not a map<i64, Point> in JSON: nested too deeply (see --help)\n"
    )


@pytest.mark.parametrize("text", ["[NaN]", "[-Infinity]", "[1e999]"])
def test_a_double_in_json_is_a_number_as_on_the_command_line(text):
    # The command line's double refuses nan and inf; json.loads took NaN, Infinity, and 1e999 as inf.
    with pytest.raises(argparse.ArgumentTypeError, match="not a list<double> in JSON: not a number: "):
        idl_type(TType.LIST, TType.DOUBLE)(text)


@pytest.mark.parametrize(
    ("keys", "value"),
    [(BINARY, {b"\x00\xff": 1, b"": 2}), (TType.BOOL, {True: 1, False: 2}), (TType.DOUBLE, {2.5: 1, -1e-3: 2})],
)
def test_a_map_that_json_shows_is_an_argument_that_gives_it_back(keys, value):
    # --json raised TypeError (a traceback) on binary keys; bool and double keys, text in JSON, were refused.
    shown = json.dumps(as_dict(value))
    assert idl_type(TType.MAP, (keys, TType.I32))(shown) == value


def test_binary_wrapped_as_the_base64_tool_writes_it_is_taken():
    # `base64 photo.jpg` breaks its output every 76 characters: "$(base64 photo.jpg)" was "not base64 text".
    wrapped = "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4\neHh4eA==\n"
    assert idl_type(BINARY, None)(wrapped) == b"x" * 61
    assert struct_of(CONTAINERS.Photo)(json.dumps({"data": wrapped})).data == b"x" * 61


def test_a_commands_help_may_say_percent(capsys):
    # argparse formats each help with %: "100% fresh" made --help a traceback (TypeError), as an argument's would.
    cli = CommandLine(CountersClient, counters_thrift.Counters, ROOT / "config.env", {}, show=str)
    cli.command("get", "one counter, 100% fresh", "name")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "one counter, 100% fresh" in capsys.readouterr().out


def test_a_struct_argument_takes_binary_broken_into_lines_inside_its_json():
    # '{"data": "'"$(base64 photo.jpg)"'"}' puts the base64 tool's line breaks into the JSON string itself, which
    # json.loads refused: "Invalid control character at: line 1 column 78".
    wrapped = "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4\neHh4eA==\n"
    assert struct_of(CONTAINERS.Photo)('{"data": "' + wrapped + '"}').data == b"x" * 61


# A service whose results are a double and an enum, for what client.py prints of them.
ANSWERS = """include "{base}"
enum Shade {{ LIGHT = 1, DARK = 2 }}
struct Spot {{ 1: i32 x, 2: i32 y }}
service Answers extends base.BaseService {{
  double ratio() throws (1: base.Unavailable u),
  Shade shade() throws (1: base.Unavailable u),
  list<double> ratios() throws (1: base.Unavailable u),
  map<Spot, i64> tally() throws (1: base.Unavailable u),
}}
"""


@pytest.fixture
def answers_cli(tmp_path) -> Callable[[object], CommandLine]:
    """answers_cli(result): the Answers service's command line, whose client returns `result` to every call
    (checked as a reply is) instead of calling a server."""
    idl = tmp_path / "answers.thrift"
    idl.write_text(ANSWERS.format(base=BASE_THRIFT))
    answers = thriftpy2.load(str(idl), module_name="answers_thrift")

    def make(result: object) -> CommandLine:
        class AnswersClient(PooledClient):
            def __init__(self, servers: str, **options) -> None:
                super().__init__(answers.Answers, servers, **options)

            def call(self, method: str, *args: object) -> object:
                return result

            def ratio(self) -> float:
                return self.call("ratio")

            def shade(self) -> int:
                return self.call("shade")

            def ratios(self) -> list:
                return self.call("ratios")

            def tally(self) -> dict:
                return self.call("tally")

            def dark(self) -> bool:  # a method the IDL lacks, which composes its own result
                return self.call("shade") == answers.Shade.DARK

        cli = CommandLine(AnswersClient, answers.Answers, ROOT / "config.env", {}, show=repr)
        for command in ("ratio", "shade", "ratios", "tally", "dark"):
            cli.command(command, f"the {command}")
        return cli

    return make


@pytest.mark.parametrize(
    ("command", "result", "shown"),
    [
        ("ratio", float("nan"), '"NaN"'),
        ("ratio", float("-inf"), '"-Infinity"'),
        ("ratios", [1.5, float("inf")], '[1.5, "Infinity"]'),
    ],
)
def test_json_of_a_double_that_is_no_number_is_json(answers_cli, capsys, command, result, shown):
    # json.dumps wrote NaN and -Infinity bare: no JSON, which jq and JSON.parse refuse.
    assert answers_cli(result).main(["--servers", "127.0.0.1:1", "--json", command]) == 0
    assert capsys.readouterr().out == shown + "\n"


@pytest.mark.parametrize(("result", "shown"), [(2, "DARK"), (7, "7")])
def test_a_table_shows_an_enum_result_by_its_name(answers_cli, capsys, result, shown):
    # show() got the bare number, which it cannot tell from an integer result: client.py printed 2 for DARK.
    assert answers_cli(result).main(["--servers", "127.0.0.1:1", "shade"]) == 0
    assert capsys.readouterr().out == shown + "\n"
    assert answers_cli(result).main(["--servers", "127.0.0.1:1", "--json", "shade"]) == 0
    assert capsys.readouterr().out == f"{result}\n"  # for scripts: the number, as in every struct


def sent_by(cli: CommandLine, *args: str) -> tuple:
    """The arguments `client.py ARGS` gave the typed client's call."""
    assert cli.main(["--servers", "127.0.0.1:1", *args]) == 0
    return cli.client_class.sent[-1][1]


def test_an_argument_with_an_idl_default_may_be_left_out_and_the_call_gets_that_default(rich, rich_cli):
    # The command demanded each one: `tally DARK` was "the following arguments are required: include_archived".
    assert sent_by(rich_cli, "tally", "DARK")[:2] == (2, False)
    assert sent_by(rich_cli, "rank", '["a"]') == ({"a"}, 5, 2, -1.5, [rich.Point(x=1, y=-2)], {7: b"hi"}, "")


def test_an_argument_with_an_idl_default_takes_the_value_given(rich, rich_cli):
    assert sent_by(rich_cli, "tally", "DARK", "true")[:2] == (2, True)
    given = ["-7", "LIGHT", "-1e3", '[{"x": 3, "y": 4}]', '{"1": "AP8="}', "--", "-bob"]
    sent = sent_by(rich_cli, "rank", '["a"]', *given)
    assert sent == ({"a"}, -7, 1, -1000.0, [rich.Point(x=3, y=4)], {1: b"\0\xff"}, "-bob")
    assert sent_by(rich_cli, "rank", '["a"]', "9") == ({"a"}, 9, 2, -1.5, [rich.Point(x=1, y=-2)], {7: b"hi"}, "")


def test_a_value_after_an_option_fills_an_argument_with_an_idl_default(rich_cli):
    # argparse gave include_archived its default from the values before --request-id, then refused `true`.
    assert sent_by(rich_cli, "tally", "DARK", "--request-id", "r1", "true") == (2, True, "r1")
    assert sent_by(rich_cli, "tally", "DARK", "--request-id", "r2") == (2, False, "r2")


def test_a_struct_or_container_default_is_not_shared_between_calls(rich, rich_cli):
    # thriftpy2 gives every rank_args one and the same list as its default: a call that changed it would change
    # what the next call left out sends.
    sent_by(rich_cli, "rank", '["a"]')[4].append(rich.Point(x=9, y=9))
    assert sent_by(rich_cli, "rank", '["a"]')[4] == [rich.Point(x=1, y=-2)]


def test_the_help_shows_each_idl_default_as_it_is_typed(rich_cli, capsys):
    with pytest.raises(SystemExit):
        rich_cli.main(["rank", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "rank [-h] tags [top] [shade] [ratio] [corners] [seeds] [note]" in shown
    for help_text in [
        "top A whole number from -2**31 to 2**31-1 (Thrift i32). (default: 5)",
        "shade One of LIGHT, DARK (or its number: Shade). (default: DARK)",
        "ratio A number, such as 2.5 or -1e3 (Thrift double). (default: -1.5)",
        """corners A list<Point> as a JSON array. (default: '[{"x": 1, "y": -2}]')""",
        """seeds A map<i64, binary> as a JSON object. (default: '{"7": "aGk="}')""",
        "note Text (Thrift string: valid UTF-8). (default: '')",
    ]:
        assert help_text in shown
    with pytest.raises(SystemExit):
        rich_cli.main(["tally", "--help"])
    assert "include_archived true or false (Thrift bool). (default: false)" in " ".join(capsys.readouterr().out.split())


def test_an_argument_with_an_idl_default_before_one_without_stays_required(rich_cli, capsys):
    # Values fill arguments in order: first cannot be left out while second, after it, is required.
    assert sent_by(rich_cli, "skewed", "4", "x") == (4, "x", 3)
    with pytest.raises(SystemExit) as exit_:
        rich_cli.main(["--servers", "127.0.0.1:1", "skewed", "4"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: skewed: the following arguments are required: second (see --help)\n"


def test_a_value_that_starts_with_a_dash_for_an_argument_with_an_idl_default_is_told_how_to_give_it(rich_cli, capsys):
    # argparse read -bob as an option and left it over: nothing said it was meant as the note.
    with pytest.raises(SystemExit) as exit_:
        rich_cli.main(["--servers", "127.0.0.1:1", "rank", '["a"]', "5", "LIGHT", "1", "[]", "{}", "-bob"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: rank: unrecognized arguments: -bob"
        " (-bob was read as an option: a value that starts with - goes after --) (see --help)\n"
    )
    assert rich_cli.client_class.sent == []


def test_an_idl_default_its_type_cannot_hold_is_refused_when_declared(tmp_path):
    # thriftpy2 takes `byte b = 300`: a command leaving it out would send what the server cannot read.
    idl = tmp_path / "wide.thrift"
    idl.write_text(
        f'include "{BASE_THRIFT}"\nservice Wide extends base.BaseService {{ void store(1: byte b = 300) }}\n'
    )
    wide = thriftpy2.load(str(idl), module_name="wide_thrift")

    class WideClient(PooledClient):
        def store(self, b) -> None:
            return self.call("store", b)

    cli = CommandLine(WideClient, wide.Wide, ROOT / "config.env", {}, show=str)
    with pytest.raises(TypeError, match=r"command store: the IDL's default of 'b' does not fit: 300 is out of range"):
        cli.command("store", "a byte", "b")


@pytest.mark.parametrize(("as_json", "shown"), [([], "True"), (["--json"], "true")])
def test_a_command_on_a_client_method_the_idl_lacks_shows_its_result(answers_cli, capsys, as_json, shown):
    # A method of the typed client named otherwise, as cli.command allows: client.py looked its result type up in
    # the IDL after the call (a write's already applied) and ended in a traceback (AttributeError: no dark_result).
    assert answers_cli(2).main(["--servers", "127.0.0.1:1", *as_json, "dark"]) == 0
    assert capsys.readouterr().out == shown + "\n"


def test_json_of_a_map_whose_keys_are_structs_is_json_that_reads_back_as_an_argument(answers_cli, capsys):
    # A struct key became an object, which no JSON object's key can be: a traceback (unhashable type: 'dict').
    cli = answers_cli({})
    spot = cli.service.tally_result.thrift_spec[0][2][0][1]
    tally = {spot(x=1, y=2): 3, spot(x=-1, y=0): 4}
    assert answers_cli(tally).main(["--servers", "127.0.0.1:1", "--json", "tally"]) == 0
    shown = capsys.readouterr().out
    assert json.loads(shown) == {'{"x": 1, "y": 2}': 3, '{"x": -1, "y": 0}': 4}
    assert idl_type(TType.MAP, cli.service.tally_result.thrift_spec[0][2])(shown) == tally
