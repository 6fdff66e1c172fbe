"""The command line of a service's client.py: global options, one subcommand per RPC, exit statuses.

A service declares its subcommands (`CommandLine.command`) and how to show its results; this module checks every
argument before a byte is sent (a bad one is one line on stderr and status 2), calls the typed client, prints a
table or `--json`, and turns each error into one line and its own exit status.
"""

import argparse
import base64
import binascii
import codecs
import inspect
import json
import math
import re
import shlex
import signal
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from thriftpy2.thrift import TApplicationException, TException, TType

from servicekit.addresses import called_at, host_port, parse_servers
from servicekit.base import base_module
from servicekit.client import (
    INTEGER_BITS,
    PooledClient,
    RequestTooLarge,
    ServerUnreachable,
    UnexpectedReply,
    check_value,
    new_request_id,
    reason,
)
from servicekit.console import OneLineParser, print_result, seconds, to_stderr
from servicekit.errors import REQUEST_ID, REQUEST_ID_FORM
from servicekit.exit_statuses import (
    EXIT_CONFLICT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_INVALID,
    EXIT_OTHER_DECLARED,
    EXIT_TERMINATED,
    EXIT_UNAVAILABLE,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from servicekit.settings import ClientSettings, SettingsError, load, misspelled
from servicekit.tls import tls_context
from servicekit.wire import BINARY, TYPE_NAMES, element_type, field_type

INT64 = (-(2**63), 2**63 - 1)
INT32 = (-(2**31), 2**31 - 1)
GLOBAL_OPTIONS = ("--servers", "--timeout", "--json")  # of every command, given before it
# What the kit's exit statuses mean. A service's own exceptions take others, up to 125: past it the shell's
# own (126 cannot run, 127 not found, 128 + a signal's number) begin.
KIT_EXIT_STATUSES = {
    0: "ok",
    EXIT_INTERNAL: "internal error",
    EXIT_USAGE: "usage",
    EXIT_INVALID: "InvalidArgument",
    EXIT_CONFLICT: "Conflict",
    EXIT_UNAVAILABLE: "Unavailable (or health not ok)",
    EXIT_UNREACHABLE: "server unreachable",
    EXIT_OTHER_DECLARED: "another declared error",
    EXIT_INTERRUPTED: "interrupted",
    EXIT_TERMINATED: "terminated",
}
LAST_SERVICE_EXIT_STATUS = 125
UNSIGNED = r"([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?"  # a double's digits, in ASCII
NUMBER = re.compile(f"-?{UNSIGNED}")


def _integer(text: str, low: int, high: int) -> int:
    # Plain ASCII digits: int() also takes "5_000", " +5" and other scripts' digits, too loose for money.
    if not re.fullmatch(r"-?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} is out of range ({low} to {high})")
    return value


# A command's --help shows each argument's type by the first line of its docstring.


def byte(text: str) -> int:
    """A whole number from -128 to 127 (Thrift byte)."""
    return _integer(text, -(2**7), 2**7 - 1)


def i16(text: str) -> int:
    """A whole number from -32768 to 32767 (Thrift i16)."""
    return _integer(text, -(2**15), 2**15 - 1)


def i32(text: str) -> int:
    """A whole number from -2**31 to 2**31-1 (Thrift i32)."""
    return _integer(text, *INT32)


def i64(text: str) -> int:
    """A whole number from -2**63 to 2**63-1 (Thrift i64)."""
    return _integer(text, *INT64)


def double(text: str) -> float:
    """A number, such as 2.5 or -1e3 (Thrift double)."""
    # ASCII, as whole numbers are: float() also takes "1_0", other scripts' digits, "nan" and "inf".
    try:
        return _finite(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _finite(text: str) -> float:
    """A double's text as a finite float, or ValueError: json.loads also reads NaN, Infinity, and 1e999 as inf."""
    if not NUMBER.fullmatch(text) or math.isinf(float(text)):
        raise ValueError(f"not a number: {text!r}")
    return float(text)


def boolean(text: str) -> bool:
    """true or false (Thrift bool)."""
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"not true or false: {text!r}")
    return text == "true"


def string(text: str) -> str:
    """Text (Thrift string: valid UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"not valid UTF-8: {text!r}") from None
    return text


def binary(text: str) -> bytes:
    """Bytes written as base64 text (Thrift binary)."""
    try:
        return _from_json(BINARY, None, text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def enum_of(enum: type) -> Callable[[str], int]:
    """The type of an argument that is an enum of the IDL: one of its names, or a number (a newer server's)."""
    names = enum._NAMES_TO_VALUES

    def parse(text: str) -> int:
        if text in names:
            return names[text]
        if re.fullmatch(r"-?[0-9]+", text):
            return _integer(text, *INT32)
        raise argparse.ArgumentTypeError(f"not {_a(enum.__name__)}: {text!r} (one of {', '.join(names)})")

    parse.__doc__ = f"One of {', '.join(names)} (or its number: {enum.__name__})."
    return parse


def struct_of(struct: type) -> Callable[[str], object]:
    """The type of an argument that is a struct of the IDL, written as a JSON object of its fields:
    '{"name": "pen", "price": 120, "tags": ["office"]}'; a struct inside it is an object too, binary base64 text,
    an enum its name or number."""
    return _json_of(TType.STRUCT, struct)


def idl_type(kind: int, held: object) -> Callable[[str], object]:
    """The command-line type of a Thrift type (`held` as wire.field_type gives it): what `CommandLine.command`
    uses for an argument given by name only. A struct, list, set or map is written as JSON."""
    if _is_enum(held):
        return enum_of(held)
    plain = {TType.BYTE: byte, TType.I16: i16, TType.I32: i32, TType.I64: i64, TType.DOUBLE: double}
    plain |= {TType.BOOL: boolean, TType.STRING: string, BINARY: binary}
    return plain.get(kind) or _json_of(kind, held)


def _is_enum(held: object) -> bool:
    return hasattr(held, "_NAMES_TO_VALUES")  # thriftpy2's enums are classes of names and values


def idl_name(kind: int, held: object) -> str:
    """A Thrift type as the IDL writes it: i64, list<Tag>, map<string, i64>."""
    if kind == TType.STRUCT or _is_enum(held):
        return held.__name__
    if kind in (TType.LIST, TType.SET):
        return f"{TYPE_NAMES[kind]}<{idl_name(*element_type(held))}>"
    if kind == TType.MAP:
        return f"map<{idl_name(*element_type(held[0]))}, {idl_name(*element_type(held[1]))}>"
    return TYPE_NAMES[kind]


def _json_of(kind: int, held: object) -> Callable[[str], object]:
    name = idl_name(kind, held)

    def parse(text: str) -> object:
        try:
            value = _from_json(kind, held, _json_loads(text))
            check_value(name, kind, held, value)
        except (ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
            raise argparse.ArgumentTypeError(f"not {_a(name)} in JSON: {error}") from None
        except RecursionError:  # json.loads recurses once per bracket: a word on the command line holds 128 kB
            raise argparse.ArgumentTypeError(f"not {_a(name)} in JSON: nested too deeply") from None
        return value

    shape = "object of its fields" if kind == TType.STRUCT else "object" if kind == TType.MAP else "array"
    article = _a(name)
    parse.__doc__ = f"{article[0].upper()}{article[1:]} as a JSON {shape}."
    return parse


def _json_loads(text: str) -> object:
    """JSON as the command line takes it: a line break inside a string ("$(base64 photo.jpg)" in a binary field),
    and no NaN, Infinity or 1e999 (json.loads reads them as floats)."""
    return json.loads(text, strict=False, parse_float=_finite, parse_constant=_finite)


def _a(name: str) -> str:
    """A type's name with its article: "a Point", "an Item", "a list<Item>"."""
    return f"{'an' if name[0] in 'AEIOUaeiou' else 'a'} {name}"


def _struct_from_json(struct: type, fields: object) -> object:
    if not isinstance(fields, dict):
        raise TypeError(f"{struct.__name__} is a JSON object of its fields")
    specs = {spec[1]: spec for spec in struct.thrift_spec.values()}
    if unknown := sorted(set(fields) - set(specs)):
        raise TypeError(f"{struct.__name__} has no field {unknown[0]!r}")
    return struct(**{name: _from_json(*field_type(specs[name]), value) for name, value in fields.items()})


def _from_json(kind: int, held: object, value: object) -> object:
    """A JSON value as thriftpy2 takes Thrift type `kind`: structs built, sets made, base64 text decoded for binary,
    enum names and a map's keys (JSON's are text) turned to numbers; checked afterwards."""
    if kind == TType.STRUCT:
        return _struct_from_json(held, value)
    if kind in (TType.LIST, TType.SET) and isinstance(value, list):
        items = [_from_json(*element_type(held), item) for item in value]
        return set(items) if kind == TType.SET else items
    if kind == TType.MAP and isinstance(value, dict):
        keys, items = element_type(held[0]), element_type(held[1])
        return {_key_from_json(*keys, key): _from_json(*items, item) for key, item in value.items()}
    if kind == BINARY and isinstance(value, str):
        try:  # without its line breaks: the base64 tool breaks its output every 76 characters
            return base64.b64decode("".join(value.split()), validate=True)
        except binascii.Error:
            raise ValueError(f"binary is base64 text, not {value[:20]!r}") from None
    if _is_enum(held) and isinstance(value, str):
        if value not in held._NAMES_TO_VALUES:
            raise ValueError(f"{held.__name__} has no value {value!r} (one of {', '.join(held._NAMES_TO_VALUES)})")
        return held._NAMES_TO_VALUES[value]
    return value


def _key_from_json(kind: int, held: object, key: str) -> object:
    """A JSON object's key, always text, as a map's key type, as json.dumps writes one: "7" for an integer key,
    "2.5" for a double, "true" for a bool; and as --json writes a struct's: '{"x": 1, "y": 2}'."""
    if kind in INTEGER_BITS and re.fullmatch(r"-?[0-9]+", key):
        return int(key)
    if kind == TType.DOUBLE and NUMBER.fullmatch(key):
        return _finite(key)
    if kind == TType.BOOL and key in ("true", "false"):
        return key == "true"
    if kind == TType.STRUCT:  # its object as JSON text
        return _from_json(kind, held, _json_loads(key))
    return _from_json(kind, held, key)


def _as_typed(kind: int, held: object, value: object) -> str:
    """A value of Thrift type `kind` as the command line takes it (its idl_type reads it back): false, 5, -1.5, an
    enum's name, binary as base64, a struct, list, set or map as JSON."""
    plain = _plain(kind, held, value)
    return plain if isinstance(plain, str) else json.dumps(plain, ensure_ascii=False)


def _plain(kind: int, held: object, value: object) -> object:
    """`value` as JSON holds it, as _from_json reads it. thriftpy2 leaves an IDL default's structs inside a
    container as dicts, and its binary as text: both are taken."""
    if kind == TType.STRUCT:
        specs = {spec[1]: spec for spec in held.thrift_spec.values()}
        fields = value if isinstance(value, dict) else {name: getattr(value, name) for name in specs}
        return {name: _plain(*field_type(specs[name]), item) for name, item in fields.items() if item is not None}
    if kind in (TType.LIST, TType.SET):
        return [_plain(*element_type(held), item) for item in value]
    if kind == TType.MAP:  # json.dumps writes a number's or a bool's key as _key_from_json reads it
        keys, items = element_type(held[0]), element_type(held[1])
        return {_plain(*keys, key): _plain(*items, item) for key, item in value.items()}
    if kind == BINARY:
        return base64.b64encode(value.encode() if isinstance(value, str) else value).decode("ascii")
    if _is_enum(held):
        return held._VALUES_TO_NAMES.get(value, value)
    return value


def _check_exit_statuses(exit_statuses: dict[type, int], kit_errors: dict[type, int]) -> None:
    """ValueError, when client.py starts, for a status a script would read as the kit's (7 as "retry") or 0."""
    for error, status in exit_statuses.items():
        if type(status) is not int:  # sys.exit() prints a string or a float and exits 1; True is 1
            raise ValueError(f"{error.__name__}'s exit status must be a whole number, not {status!r}")
        if error in kit_errors:
            raise ValueError(f"{error.__name__} exits {kit_errors[error]}, the kit's status for it: leave it out")
        if status in KIT_EXIT_STATUSES or not 1 <= status <= LAST_SERVICE_EXIT_STATUS:
            kit = KIT_EXIT_STATUSES.get(status, "the shell's")
            raise ValueError(f"{error.__name__} cannot exit {status} ({kit}): give it 4, 6 or 10 to 125")


def request_id(text: str) -> str:
    """--request-id: of the form the server accepts, so a bad one is a usage error and nothing is sent."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty (leave the option out for a new id)")
    if not REQUEST_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not {REQUEST_ID_FORM}")
    return text


def servers(text: str) -> str:
    try:
        parse_servers(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _default_servers(settings: ClientSettings) -> str | None:
    """THRIFT_HOST:THRIFT_PORT, at 127.0.0.1 when THRIFT_HOST binds every address; None if it is no host."""
    try:
        parse_servers(default := host_port(called_at(settings.thrift_host), settings.thrift_port))
    except ValueError:
        return None
    return default


class Terminated(Exception):
    """The command got SIGTERM."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _trailing_defaults(arguments: list[tuple[str, Callable, str | None]]) -> list[tuple[str, Callable, str | None]]:
    """`arguments` with a default kept only from the last one that has none on: values fill arguments in order, so
    only the last ones can be left out."""
    required = max((i + 1 for i, (_, _, default) in enumerate(arguments) if default is None), default=0)
    return [(name, kind, default if i >= required else None) for i, (name, kind, default) in enumerate(arguments)]


def _retry_hint(command: str, request_id: str | None) -> str:
    """What to add to the error of a write whose outcome is unknown: how to repeat it safely."""
    if request_id is None:
        return ""
    # With "=": an id that starts with "-" would be read as an option. Its characters need no shell quoting.
    return f"; the {command} may have been applied: repeat it with --request-id={request_id} to apply it at most once"


def _stdout_is_utf8() -> bool:
    return codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name == "utf-8"


class _OneLineParser(OneLineParser):
    """client.py's parser: a global option given after the command is told where it goes, and a value that
    starts with - how to give it."""

    given: Sequence[str] = ()  # the words this parser was given

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Every negative number a double takes is a value, as in Python 3.14's argparse: older ones read only -5
        # and -2.5 so, and -1e3 (a double's help shows it) or -1. as an option, shifting the values after it.
        self._negative_number_matcher = re.compile(f"-{UNSIGNED}$")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self.given = sys.argv[1:] if args is None else args  # as argparse reads them (a command's: from its name)
        namespace, extras = super().parse_known_args(args, namespace)
        # `note 5 -bob`, whose text may be left out: the top parser would say only that -bob is unrecognized.
        if self._stray(extras) and any(action.nargs == "?" for action in self._get_positional_actions()):
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def _match_arguments_partial(self, actions: list, arg_strings_pattern: str) -> list[int]:
        # `tally DARK --request-id r1 true`: argparse before gh-59317's fix (2024) gave include_archived nothing
        # (its default) from the values before the option, then refused `true`. As since: an argument that may be
        # left out and matched nothing just before an option waits for the values after it.
        counts = super()._match_arguments_partial(actions, arg_strings_pattern)
        if arg_strings_pattern[sum(counts) : sum(counts) + 1] == "O":
            while counts and not counts[-1]:
                counts.pop()
        return counts

    def explained(self, message: str) -> str:
        # The commonest slip, `client.py get-account 1 --json`: the command's parser leaves --json to the top one,
        # which takes it only before the command.
        if message.startswith("unrecognized arguments:") and any(
            word.partition("=")[0] in GLOBAL_OPTIONS for word in message.split()
        ):
            message += f" ({', '.join(GLOBAL_OPTIONS)} go before the command)"
        # `create-account -bob`: argparse takes -bob for an option, and says only that the owner is missing.
        # `note 5 -bob`, whose text may be left out, is not missing it: -bob is left over.
        left_over = message.startswith("unrecognized arguments:")
        unknown = self._stray(message.split()) if left_over else self._read_as_options()
        missing = message.startswith("the following arguments are required")
        # Not the top parser's: what it lacks is the command, which is no value.
        if (missing or left_over) and unknown and self._subparsers is None:
            message += f" ({unknown[0]} was read as an option: a value that starts with - goes after --)"
        return message

    def _read_as_options(self) -> list[str]:
        """The words given that argparse read as options this parser lacks."""
        words = list(self.given)
        before_values = words[: words.index("--")] if "--" in words else words  # after --, every word is a value
        return [word for word in before_values if self._unknown_option(word)]

    def _stray(self, extras: Sequence[str]) -> list[str]:
        """Those of the words argparse left over that it read as options this parser lacks, but the global options
        (told where they go)."""
        options = self._read_as_options()
        return [word for word in options if word in extras and word.partition("=")[0] not in GLOBAL_OPTIONS]

    def _unknown_option(self, word: str) -> bool:
        """Whether argparse read `word` as an option this parser lacks. As argparse, it reads '-', a negative
        number and a word with a space in it as values: told to go after --, they would not be missing."""
        if len(word) < 2 or not word.startswith("-") or word.partition("=")[0] in self._option_string_actions:
            return False
        negative = self._negative_number_matcher.match(word) and not self._has_negative_number_optionals
        return not negative and " " not in word


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Rows under headers, columns padded to line up on a terminal (wide CJK and emoji characters included)."""
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(_columns(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell + " " * (width - _columns(cell)) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _columns(text: str) -> int:
    """How many terminal columns `text` takes."""
    return sum(map(_character_columns, text))


def _character_columns(character: str) -> int:
    if unicodedata.combining(character) or unicodedata.category(character) == "Cf":
        return 0  # an accent on the character before it, or invisible (a zero-width joiner)
    return 2 if unicodedata.east_asian_width(character) in "WF" else 1  # wide: CJK, most emoji


def as_dict(value: object) -> object:
    """A Thrift value as plain data for JSON: structs as objects, in lists and maps too; binary as base64 text
    (as struct_of reads it), and a double that is no number as the text "NaN", "Infinity" or "-Infinity", both as
    Thrift's JSON protocol writes them (json.dumps writes NaN bare, which is not JSON: jq and JSON.parse refuse it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (list, set, frozenset)):
        return [as_dict(item) for item in value]
    if isinstance(value, dict):  # a binary key too: json.dumps takes only text, numbers and bools for keys
        return {_json_key(as_dict(key)): as_dict(item) for key, item in value.items()}
    if isinstance(value, bytes):  # _fitting refused a string that is not UTF-8: bytes left are binary
        return base64.b64encode(value).decode("ascii")
    if hasattr(value, "thrift_spec"):
        return {name: as_dict(getattr(value, name)) for _, name, *_ in value.thrift_spec.values()}
    return value


def _json_key(key: object) -> object:
    """A map's key as JSON takes it: a struct's object as its JSON text (a dict cannot be a key: TypeError)."""
    return json.dumps(key) if isinstance(key, dict) else key


def _items_field(page: object) -> str:
    """The name of a page struct's list field (the other is next_cursor), as the IDL declares it."""
    return next(name for kind, name, *_ in page.thrift_spec.values() if kind == TType.LIST)


def every_page(call: Callable[..., Any], options: dict[str, object]) -> Any:
    """Follow next_cursor to the last page; return one page holding every item.

    A page whose list is unset (a server that leaves out an empty one) holds no items.
    """
    page = call(**options)
    field = _items_field(page)
    items = getattr(page, field) or []
    while page.next_cursor:
        page = call(**{**options, "cursor": page.next_cursor})
        items += getattr(page, field) or []
    setattr(page, field, items)
    page.next_cursor = ""
    return page


class CommandLine:
    """client.py's command line for `client_class` (a PooledClient with typed methods).

    exit_statuses: the service's own exceptions and their statuses; the
    kit's InvalidArgument (3), Conflict (5) and Unavailable (7) are added,
    and any other exception the IDL declares exits 9.
    show(result) -> str: a result for people; `--json` prints as_dict(result).
    """

    def __init__(
        self,
        client_class: type[PooledClient],
        service: type,
        config_file: Path,
        exit_statuses: dict[type, int],
        show: Callable[[object], str],
    ) -> None:
        base = base_module(service)
        kit_errors = {
            base.InvalidArgument: EXIT_INVALID,
            base.Conflict: EXIT_CONFLICT,
            base.Unavailable: EXIT_UNAVAILABLE,
        }
        _check_exit_statuses(exit_statuses, kit_errors)
        self.client_class = client_class
        self.service = service
        self.health = base.Health
        self.service_name = service.__name__
        self.config_file = config_file
        self.service_exit_statuses = exit_statuses
        self.exit_statuses = {**kit_errors, **exit_statuses}
        self.show = show
        # Each argument as (name, type, its default as typed, or None when it is required).
        self._commands: list[tuple[str, str, Sequence[tuple[str, Callable, str | None]], bool, bool]] = []
        self.command("ping", "check that the server answers")
        self.command("health", "whether the server serves and its database answers (exit 7 if not)")

    def command(
        self, name: str, help: str, *arguments: str | tuple[str, Callable], write: bool = False, page: bool = False
    ) -> None:
        """A subcommand calling the client method `name` (dashes for underscores).

        arguments: each the name of an argument of the IDL's method `name`,
        whose type it takes (idl_type), or a (name, type) pair, such as
        ("item_id", i64); write adds --request-id; page adds --limit, --cursor
        and --all. An argument named only may be left out when it and every
        one after it have a default in the IDL: the call gets that default.
        TypeError, when client.py starts, unless the client method takes those
        parameters by name, and needs no other.
        """
        arguments = _trailing_defaults([self._typed(name, argument) for argument in arguments])
        wanted = [argument for argument, _, _ in arguments]
        wanted += ["request_id"] * write + ["limit", "cursor"] * page
        method = getattr(self.client_class, name.replace("-", "_"), None)
        if method is None:
            raise TypeError(f"command {name}: {self.client_class.__name__} has no method {name.replace('-', '_')}")
        parameters = list(inspect.signature(method).parameters.values())[1:]  # after self
        # The call passes each argument by name: one the method takes only by position fails there, with a traceback.
        if by_position := [p.name for p in parameters if p.kind == p.POSITIONAL_ONLY and p.default is p.empty]:
            what = f"{self.client_class.__name__}.{method.__name__}"
            raise TypeError(f"command {name}: {what} takes {by_position} only by position; the command passes names")
        missing = [parameter for parameter in wanted if parameter not in [p.name for p in parameters]]
        if missing:
            raise TypeError(f"command {name}: {self.client_class.__name__}.{method.__name__} takes no {missing}")
        # Else the command would parse its arguments, then fail in the call with a traceback.
        needed = [
            p.name for p in parameters if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if unfilled := [parameter for parameter in needed if parameter not in wanted]:
            raise TypeError(f"command {name}: {self.client_class.__name__}.{method.__name__} needs {unfilled} too")
        self._commands.append((name, help, arguments, write, page))

    def _typed(self, command: str, argument: str | tuple[str, Callable]) -> tuple[str, Callable, str | None]:
        """(name, type, default) for an argument: given by name, the type of the IDL method's argument of that name
        and its IDL default as typed (None if it has none, or for a (name, type) pair)."""
        if not isinstance(argument, str):
            return (*argument, None)
        method = command.replace("-", "_")
        specs = getattr(self.service, method + "_args", None)
        spec = next((spec for spec in specs.thrift_spec.values() if spec[1] == argument), None) if specs else None
        if spec is None:
            raise TypeError(
                f"command {command}: the IDL's {self.service_name}.{method} has no argument {argument!r} to take"
                f" its type from: give ({argument!r}, type)"
            )
        kind = idl_type(*field_type(spec))
        default = dict(specs.default_spec)[argument]  # None: no default (an IDL cannot write null)
        if default is None:
            return argument, kind, None
        text = _as_typed(*field_type(spec), default)
        try:  # thriftpy2 takes `byte b = 300`: refused here, not when a command leaves it out
            kind(text)
        except argparse.ArgumentTypeError as error:
            raise TypeError(f"command {command}: the IDL's default of {argument!r} does not fit: {error}") from None
        return argument, kind, text

    def parser(self, settings: ClientSettings) -> argparse.ArgumentParser:
        meanings = dict(KIT_EXIT_STATUSES)
        for error, status in self.service_exit_statuses.items():
            meanings[status] = f"{meanings[status]} or {error.__name__}" if status in meanings else error.__name__
        statuses = ", ".join(f"{status} {meaning}" for status, meaning in sorted(meanings.items()))
        parser = _OneLineParser(description=f"Call the {self.service_name} service.", epilog=f"exit status: {statuses}")
        parser.add_argument(
            "--servers",
            type=servers,
            default=_default_servers(settings),
            help="host:port[,host:port...] (default from THRIFT_HOST and THRIFT_PORT: %(default)s)",
        )
        parser.add_argument(
            "--timeout", type=seconds, default=settings.client_timeout, help="seconds in all (default %(default)s)"
        )
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
        for name, help, arguments, write, page in self._commands:
            sub = subcommands.add_parser(name, help=help.replace("%", "%%"))  # argparse formats each help with %
            for argument, kind, default in arguments:
                shown = (kind.__doc__ or "").partition("\n")[0]
                if default is None:
                    sub.add_argument(argument, type=kind, help=shown.replace("%", "%%") or None)
                else:  # argparse parses a text default with `type` on each call: no value shared between calls
                    shown += f" (default: {shlex.quote(default)})"
                    sub.add_argument(argument, nargs="?", type=kind, default=default, help=shown.replace("%", "%%"))
            if write:
                sub.add_argument("--request-id", type=request_id, help="repeat a write safely (default: a new id)")
            if page:
                sub.add_argument("--limit", type=i32, default=100, help="at most this many (default %(default)s)")
                sub.add_argument("--cursor", type=string, default="", help="the next_cursor of the page before")
                sub.add_argument("--all", action="store_true", help="follow next_cursor to the last page")
        return parser

    def main(self, argv: list[str] | None = None) -> int:
        try:
            settings = load(ClientSettings, self.config_file)
        except SettingsError as error:
            to_stderr(f"error: {error}")
            return EXIT_USAGE
        for warning in misspelled():
            to_stderr(f"warning: {warning}")
        options = vars(self.parser(settings).parse_args(argv))
        if options["servers"] is None:  # no --servers, and THRIFT_HOST makes no address
            to_stderr(f"error: THRIFT_HOST must be a host name or IP address, not {settings.thrift_host!r}")
            return EXIT_USAGE
        if "request_id" in options:  # a write: its id is chosen here, to be shown if the outcome is unknown
            options["request_id"] = options["request_id"] or new_request_id()
        unsure = _retry_hint(options["command"], options.get("request_id"))
        # SIGTERM (`timeout 5 client.py ...`, a supervisor) ends a command as Ctrl-C does: with the request id.
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return self._run(settings, options, unsure)
        except KeyboardInterrupt:
            to_stderr(f"error: interrupted{unsure}")
            return EXIT_INTERRUPTED
        except Terminated:
            to_stderr(f"error: terminated{unsure}")
            return EXIT_TERMINATED
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _connect(self, settings: ClientSettings, servers: str, timeout: float) -> PooledClient:
        tls = None
        if settings.client_tls_ca:
            tls = tls_context(settings.client_tls_ca, settings.client_tls_cert, settings.client_tls_key)
        return self.client_class(
            servers,
            pool_size=1,
            timeout=timeout,
            connect_timeout=min(timeout, 2.0),
            deadline=timeout,
            tls=tls,
            max_message_bytes=settings.thrift_max_message_bytes,
        )

    def _run(self, settings: ClientSettings, options: dict, unsure: str) -> int:
        """Call the command's method and print its result; `unsure` is appended when a write's outcome is unknown."""
        servers, timeout, as_json = options.pop("servers"), options.pop("timeout"), options.pop("json")
        method = options.pop("command").replace("-", "_")
        follow = options.pop("all", False)
        try:
            client = self._connect(settings, servers, timeout)
        except OSError as error:  # ssl.SSLError and a missing file are OSErrors
            to_stderr(f"error: cannot load the TLS files (CLIENT_TLS_*): {error.strerror or error}")
            return EXIT_USAGE
        give_up_at = time.monotonic() + timeout
        pages = 0  # read by --all so far

        def call(**arguments: object) -> object:
            nonlocal pages
            client.deadline = give_up_at - time.monotonic()  # --all makes several calls: one --timeout for all
            if client.deadline <= 0:  # before this call, which is not sent
                raise ServerUnreachable(f"{servers} (--timeout {timeout:g} s ran out)", sent=False, cut_short=True)
            result = self._fitting(method, servers, getattr(client, method)(**arguments))
            pages += 1
            return result

        try:
            with client:
                result = every_page(call, options) if follow else call(**options)
        except (RequestTooLarge, ServerUnreachable, TException) as error:
            if pages and getattr(error, "cut_short", False):  # the server answered: the list is longer than the time
                read = f"{pages} page{'s' * (pages > 1)}"
                to_stderr(f"error: --timeout {timeout:g} s ran out after {read} (--all): raise it to list them all")
                return EXIT_UNREACHABLE
            return self._report(error, unsure)
        shown = self._shown(method, result, as_json)
        if shown is not None and not print_result(shown):
            return EXIT_INTERNAL
        if method == "health" and not (result.serving and result.database):
            return EXIT_UNAVAILABLE  # lets a container healthcheck use this command
        return 0

    def _report(self, error: Exception, unsure: str) -> int:
        """One line on stderr for a call that failed (with `unsure` where its outcome is unknown); its exit status."""
        if isinstance(error, RequestTooLarge):
            message, status = str(error), EXIT_USAGE
        elif isinstance(error, UnexpectedReply):
            message = f"no {self.service_name} reply from {error}: is it a {self.service_name} server? check --servers"
            message, status = message + (unsure if error.sent else ""), EXIT_INTERNAL
        elif isinstance(error, ServerUnreachable):
            # Sent: a server had the request (its database may be what is slow). Else nothing can have been applied.
            failure = "no reply from" if error.sent else "cannot reach"
            unsure = unsure if error.sent else ""
            message, status = f"{failure} the {self.service_name} server at {error}{unsure}", EXIT_UNREACHABLE
        elif isinstance(error, TApplicationException) and error.type == TApplicationException.UNKNOWN_METHOD:
            # Nothing ran: --servers names another service, or a version of this one without the call.
            message = f"the server does not serve this call of {self.service_name} ({error}): check --servers"
            status = EXIT_INTERNAL
        elif isinstance(error, TApplicationException) and error.type == TApplicationException.PROTOCOL_ERROR:
            # Refused before it ran: the call does not fit the server's IDL, or its THRIFT_MAX_MESSAGE_BYTES.
            message, status = f"the server refused the call: {error}", EXIT_INTERNAL
        elif isinstance(error, TApplicationException):
            message, status = f"the server failed: {error}{unsure}", EXIT_INTERNAL
        else:  # declared by the IDL: only Unavailable leaves a write's outcome unknown
            status = self.exit_statuses.get(type(error), EXIT_OTHER_DECLARED)
            message = f"{type(error).__name__}: {reason(error)}{unsure if status == EXIT_UNAVAILABLE else ''}"
        to_stderr(f"error: {message}")
        return status

    def _fitting(self, method: str, servers: str, result: object) -> object:
        """`result`, unless it does not fit the IDL: UnexpectedReply. thriftpy2 hands over a string that is not
        UTF-8 as bytes, which neither a table nor JSON can show (a server of another service, or not on the kit)."""
        success = self._result_spec(method)
        try:
            if success:
                check_value(f"{method}()'s reply", *field_type(success), result)
        except (TypeError, ValueError) as error:
            raise UnexpectedReply(f"{servers} ({error})", set()) from None
        return result

    def _shown(self, method: str, result: object, as_json: bool) -> str | None:
        """What to print: None (nothing) for a void method's result, as a table; `--json` prints null."""
        if as_json:  # escaped to ASCII where stdout is not UTF-8: still valid JSON
            return json.dumps(as_dict(result), ensure_ascii=not _stdout_is_utf8())
        return None if result is None else self._human(method, result)

    def _human(self, method: str, result: object) -> str:
        if isinstance(result, self.health):
            return f"serving: {result.serving}\ndatabase: {result.database}\nversion: {result.version}"
        # An enum arrives as its number, which show() cannot tell from an integer's: its name, as arguments take it.
        success = self._result_spec(method)
        enum = field_type(success)[1] if success else None
        if _is_enum(enum):
            return enum._VALUES_TO_NAMES.get(result, str(result))  # a newer server's value: its number
        return result if isinstance(result, str) else self.show(result)

    def _result_spec(self, method: str) -> tuple | None:
        """The IDL's type of `method`'s result (thrift_spec), None for a void method, or for a typed client's
        method the IDL lacks (one named otherwise, which composes its own result from its calls)."""
        result = getattr(self.service, method + "_result", None)
        return result.thrift_spec.get(0) if result else None
