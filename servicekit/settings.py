"""Every setting of a service, declared once: name, type, default, meaning, limits.

`load()` merges config.env with the process environment and validates each value into a frozen dataclass, for
server.py and client.py at start; nothing else reads the environment. `python -m servicekit.settings update
config.env README.md` rewrites config.env's comments and the README's settings table from these declarations.
"""

import difflib
import io
import os
import re
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values
from dotenv.parser import parse_stream

S = TypeVar("S")
TABLE_START, TABLE_END = "<!-- settings table: start -->", "<!-- settings table: end -->"
CONFIG_ENV_HEADER = [
    "# Settings of this service, its client and docker-compose: the values are",
    "# yours to change; any variable set in the process environment overrides",
    "# the value here. Names, meanings and limits are declared in",
    "# servicekit/settings.py; this file's comments come from there.",
]


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


# A server's THRIFT_MAX_MESSAGE_BYTES unless set: PooledClient assumes it unless told otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 65536
# The length before a framed message (wire.FRAME_HEADER), held with it until it is whole, and not counted in
# THRIFT_MAX_MESSAGE_BYTES. (wire.py imports thriftpy2, which the container probe must not load with settings.)
FRAME_HEADER_BYTES = 4
# How alike (difflib's ratio) a variable's name must be to a setting's to be
# taken for a typo: one wrong letter in THRIFT_WORKERS is 0.93;
# MYSQL_ROOT_PASSWORD (the MySQL image's) against MYSQL_PASSWORD, 0.85.
MISSPELLED_CUTOFF = 0.88


def setting(
    default: Any = MISSING,
    meaning: str = "",
    *,
    low: float | None = None,
    high: float | None = None,
    choices: tuple[str, ...] = (),
    pattern: str = "",
    secret: bool = False,
    needs: str = "",
) -> Any:
    """Declare one setting. No default: config.env must set it (names and secrets).

    `needs`: the setting (lower-case field name) without which this one has
    no effect; setting this one alone is refused rather than ignored.
    """
    limits = {"meaning": meaning, "low": low, "high": high, "choices": choices, "pattern": pattern, "needs": needs}
    return field(default=default, repr=not secret, metadata=limits)


@dataclass(frozen=True, kw_only=True)
class CommonSettings:
    """Read by the server and by the client."""

    service_name: str = setting(
        meaning="Names the service in logs (logger names) and metrics (their prefix).",
        pattern=r"[a-z][a-z0-9_]{0,30}",
    )
    thrift_host: str = setting(
        "127.0.0.1",
        "Address the server binds (`::` binds every IPv4 and IPv6 address); the client connects there, "
        "or to 127.0.0.1 when it is `0.0.0.0` or `::`.",
    )
    thrift_port: int = setting(9090, "Thrift port.", low=1, high=65535)
    thrift_max_message_bytes: int = setting(
        DEFAULT_MAX_MESSAGE_BYTES,
        "Largest request the server accepts, in bytes; client.py refuses a longer one before sending it, and so "
        "does PooledClient, which assumes 65536 unless given the server's own.",
        low=1024,
        high=2**30,
    )


@dataclass(frozen=True, kw_only=True)
class ServerSettings(CommonSettings):
    thrift_workers: int = setting(
        4,
        "Worker threads per server process: requests in progress at once. Raise it when requests spend "
        "long waiting on the database (a remote or busy one); past what those waits need, more workers "
        "only take turns with the GIL, which costs CPU.",
        low=1,
        high=1024,
    )
    thrift_processes: int = setting(
        1, "Server processes sharing the port (pre-fork), to use more than one core.", low=1, high=256
    )
    thrift_idle_timeout: float = setting(
        600, "Seconds an open connection may sit idle before the server closes it.", low=0.1, high=86400
    )
    thrift_read_timeout: float = setting(
        10,
        "Seconds a client may take to send a whole message, finish a TLS handshake, "
        "or take a reply the server is sending.",
        low=0.1,
        high=3600,
    )
    thrift_drain_timeout: float = setting(
        10, "Seconds a SIGTERM waits for running requests before the server exits.", low=0, high=3600
    )
    thrift_max_connections: int = setting(
        10000, "Open connections per server process; more are closed at once.", low=1, high=1_000_000
    )
    thrift_max_buffered_bytes: int = setting(
        64 * 2**20,
        "Bytes of unfinished requests one server process holds in all (any client can send part of one and "
        "wait): past it, the connection that adds more is closed. At least THRIFT_MAX_MESSAGE_BYTES + 4 (a "
        "frame's header); keep it well under the memory limit.",
        low=2**16,
        high=2**40,
    )
    thrift_tls_cert: str = setting("", "PEM certificate: with THRIFT_TLS_KEY, serve TLS only (1.2 or newer).")
    thrift_tls_key: str = setting("", "PEM private key of THRIFT_TLS_CERT.", needs="thrift_tls_cert")
    thrift_tls_client_ca: str = setting(
        "", "Require client certificates signed by this CA (PEM).", needs="thrift_tls_cert"
    )
    # Never empty: mysqlclient would use the local Unix socket, unseen (write localhost for that).
    mysql_host: str = setting("127.0.0.1", "Database server.", pattern=r".+")
    mysql_port: int = setting(3306, "Database port.", low=1, high=65535)
    # Never empty: mysqlclient would log in as the operating system's user (root in a container), unseen.
    mysql_user: str = setting(meaning="The service's own database user (never root).", pattern=r".+")
    mysql_password: str = setting(
        meaning="That user's password; never logged. Change it before running anywhere but a laptop.", secret=True
    )
    # Never empty: the connection would have no database, and the migration lock, named after it, no name.
    mysql_database: str = setting(meaning="Database name.", pattern=r".{1,64}")
    mysql_connect_timeout: int = setting(3, "Seconds to connect to the database.", low=1, high=3600)
    mysql_read_timeout: int = setting(
        5,
        "Seconds to wait for a query's result. Lock waits get half of it, shared by a transaction's re-runs "
        "(1 s each at least; a migration's too); a session idle for six times it is closed by the database.",
        low=1,
        high=3600,
    )
    mysql_write_timeout: int = setting(10, "Seconds to wait while sending a query.", low=1, high=3600)
    mysql_ssl_ca: str = setting(
        "",
        "TLS to MySQL, required: the CA that signed the server's certificate, which must name MYSQL_HOST "
        "(chain and host name are verified); empty: no TLS.",
    )
    mysql_ssl_cert: str = setting("", "TLS to MySQL: a client certificate (optional).", needs="mysql_ssl_ca")
    mysql_ssl_key: str = setting("", "TLS to MySQL: the client certificate's key.", needs="mysql_ssl_cert")
    db_pool: str = setting(
        "persistent",
        "`persistent`: one connection per worker thread (PersistentDB); "
        "`pooled`: a shared pool of DB_POOL_SIZE (PooledDB).",
        choices=("persistent", "pooled"),
    )
    db_pool_size: int = setting(16, "Connections in the shared pool (DB_POOL=pooled).", low=1, high=1024)
    db_deadlock_retries: int = setting(
        3, "Times a transaction is re-run after a deadlock or lock-wait timeout.", low=0, high=100
    )
    db_migration_lock_timeout: int = setting(
        60, "Seconds to wait while another process applies migrations.", low=0, high=3600
    )
    log_level: str = setting("INFO", "`DEBUG` logs every request.", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    log_format: str = setting(
        "text", "`text` for people, `json` for log collectors (one object per line).", choices=("text", "json")
    )
    slow_request_ms: float = setting(500, "Requests slower than this are logged at WARNING.", low=0, high=3_600_000)
    log_client_errors_per_10s: int = setting(
        50,
        "Lines logged in 10 s, per server process, for each kind of line a client or a failing database can "
        "repeat (malformed messages, calls the IDL lacks or does not allow, failed TLS handshakes, timeouts, "
        "statements refused, a database outage's start and end, an unexpected error's traceback); more are "
        "counted and summed up in one line.",
        low=1,
        high=1_000_000,
    )
    metrics_port: int = setting(
        0, "Prometheus metrics on http://THRIFT_HOST:METRICS_PORT/metrics; 0 turns them off.", low=0, high=65535
    )

    def __post_init__(self) -> None:
        # Past THRIFT_MAX_BUFFERED_BYTES the connection that adds bytes is closed: below THRIFT_MAX_MESSAGE_BYTES
        # and a frame's header, a request the server says it takes would be cut off while it arrives (in more than
        # one piece), on an idle server too.
        if self.thrift_max_buffered_bytes < self.thrift_max_message_bytes + FRAME_HEADER_BYTES:
            raise SettingsError(
                f"THRIFT_MAX_BUFFERED_BYTES ({self.thrift_max_buffered_bytes}) is less than THRIFT_MAX_MESSAGE_BYTES "
                f"({self.thrift_max_message_bytes}) and a frame's {FRAME_HEADER_BYTES}-byte header: a request that "
                "long could never be held; raise the first"
            )


@dataclass(frozen=True, kw_only=True)
class ClientSettings(CommonSettings):
    client_timeout: float = setting(
        10, "Seconds a client.py command may take in all, retries included.", low=0.01, high=3600
    )
    client_tls_ca: str = setting(
        "", "client.py over TLS: the CA that signed the server's certificate (chain and host name are verified)."
    )
    client_tls_cert: str = setting("", "client.py over TLS: a client certificate (optional).", needs="client_tls_ca")
    client_tls_key: str = setting("", "client.py over TLS: the client certificate's key.", needs="client_tls_cert")


def declared() -> list[Field]:
    """Every setting once, in the order config.env lists them."""
    server = fields(ServerSettings)
    return [*server, *(f for f in fields(ClientSettings) if f not in server)]


def load(kind: type[S], config_file: Path, environ: Mapping[str, str] | None = None) -> S:
    """Merge `config_file` with `environ` (default: os.environ) and validate the settings of `kind`.

    A name in `config_file` that is almost a setting's is refused: a typo there would leave the default
    in force; so is a line python-dotenv cannot parse, and a setting named without a value. Other names
    are left alone: docker-compose gives the file to the database's container too (MYSQL_ROOT_PASSWORD, TZ).
    """
    in_file = _values(_text(config_file), config_file.name)
    if misspellings := misspelled(in_file):
        raise SettingsError(f"{config_file.name}: {misspellings[0]}")
    values = {**in_file, **(os.environ if environ is None else environ)}
    parsed = {declaration.name: _parse(declaration, values, config_file) for declaration in fields(kind)}
    for declaration in fields(kind):
        if (needed := declaration.metadata["needs"]) and parsed[declaration.name] and not parsed[needed]:
            name, needed = declaration.name.upper(), needed.upper()
            raise SettingsError(f"{name} is set but {needed} is empty: {name} takes effect only with {needed}")
    return kind(**parsed)


def _text(config_file: Path) -> str:
    """`config_file`'s text, empty if there is no such file."""
    try:
        return config_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except UnicodeDecodeError as error:
        byte = error.object[error.start]
        raise SettingsError(f"{config_file.name} is not UTF-8 text (byte {byte:#x}): save it as UTF-8") from None
    except OSError as error:  # a directory (Docker makes one to bind-mount a file that is missing), no permission
        raise SettingsError(f"cannot read {config_file}: {error.strerror}") from None


def _values(text: str, file_name: str) -> dict[str, str | None]:
    """The variables of `text`, config.env's (`file_name`).

    python-dotenv skips a line it cannot parse (an unclosed quote) with at most a log line, and takes a
    bare NAME for unset: either way a setting's default would apply unseen, so both are refused here.
    """
    names = {declaration.name.upper() for declaration in declared()}
    for binding in parse_stream(io.StringIO(text)):
        # A binding's text, and its line number, start with the blank lines before it.
        original = binding.original.string
        line = binding.original.line + original[: len(original) - len(original.lstrip())].count("\n")
        where = f"{file_name} line {line}"
        if binding.error:
            named = re.match(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*=", original)  # else no name to show
            name = named.group(1) if named else ""
            # Never the line itself: it may hold a password.
            raise SettingsError(f"{where}: {name + ': ' if name else ''}not NAME=value (a quote left open?)")
        if binding.key in names and binding.value is None:
            raise SettingsError(f"{where}: {binding.key} has no value: write {binding.key}=VALUE")
        if binding.key and "\n" in original.strip():  # a quote left open, closed lines later: lines swallowed
            raise SettingsError(f"{where}: {binding.key}'s value spans lines (a quote left open?)")
    return dotenv_values(stream=io.StringIO(text))


def misspelled(environ: Mapping[str, str] | None = None) -> list[str]:
    """A line for each variable in `environ` (default: os.environ) named almost like a setting.

    In the environment they are only warned of: it is shared with other
    programs, whose variables (LOGLEVEL, say) must not stop the service.
    """
    names = [declaration.name.upper() for declaration in declared()]
    return [
        f"{variable} is not a setting: did you mean {close[0]}?"
        for variable in (os.environ if environ is None else environ)
        if variable not in names and (close := difflib.get_close_matches(variable, names, 1, MISSPELLED_CUTOFF))
    ]


def _parse(declaration: Field, values: Mapping[str, str | None], config_file: Path) -> Any:
    name, limits = declaration.name.upper(), declaration.metadata
    raw = values.get(name)
    if raw is None:
        if declaration.default is MISSING:
            # Most often the file itself is missing (client.py copied alone): say where it was looked for.
            missing = "" if config_file.exists() else f"; there is no {config_file}"
            raise SettingsError(f"{name} is not set (add it to config.env{missing})")
        return declaration.type(declaration.default)
    if declaration.type is str:
        if limits["pattern"] and not raw:
            raise SettingsError(f"{name} is empty: write {name}=VALUE")
        if limits["choices"] and raw not in limits["choices"]:
            raise SettingsError(f"{name} must be one of {', '.join(limits['choices'])}, not {raw!r}")
        if limits["pattern"] and not re.fullmatch(limits["pattern"], raw):
            raise SettingsError(f"{name} must match {limits['pattern']}, not {raw!r}")
        return raw
    try:
        if not raw.isascii() or "_" in raw:  # int() and float() also take 1_0 and other scripts' digits
            raise ValueError
        value = declaration.type(raw)
    except ValueError:
        kind = "a whole number" if declaration.type is int else "a number"
        raise SettingsError(f"{name} must be {kind}, not {raw!r}") from None
    if not limits["low"] <= value <= limits["high"]:
        raise SettingsError(f"{name} must be between {_shown(limits['low'])} and {_shown(limits['high'])}, not {raw!r}")
    return value


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def render_config_env(text: str) -> str:
    """config.env from the declarations and `text`, the file as it is: each setting's meaning, then its line;
    every other line where it was, after the setting it followed (before the first: after the header).

    A setting's line is kept as written rather than made again from its value, which would lose its quotes,
    expand its ${references} and give a bare NAME a value; a setting the file lacks gets its default.
    """
    written, after = _layout(text)
    lines = list(CONFIG_ENV_HEADER)
    if after[""]:
        lines += ["", *_kept(after[""])]
    previous_group = ""
    for declaration in declared():
        name = declaration.name.upper()
        group = name.split("_", 1)[0]
        if group != previous_group and lines[-1]:  # a blank line before each group
            lines.append("")
        previous_group = group
        meaning = declaration.metadata["meaning"].replace("`", "")
        lines += textwrap.wrap(meaning, 79, initial_indent="# ", subsequent_indent="# ")
        default = "" if declaration.default is MISSING else _shown(declaration.default)
        lines.append(written.get(name) or f"{name}={default}")
        lines += _kept(after.get(name, []))
    return "\n".join(_without_trailing_blanks(lines)) + "\n"


def _kept(lines: list[str]) -> list[str]:
    """`lines`, and a blank line after them if they end with a comment, which would else be read as the meaning
    of the setting after it."""
    return [*lines, ""] if lines and lines[-1].startswith("#") else lines


def _layout(text: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """config.env's `text` in parts: each setting's line, and the other lines after each setting ("": before
    the first), blank ones at their end left out (the blank line before a group of settings is written anew).

    Made anew, and left out here: the header, and the comment lines right above a setting (its meaning). Other
    variables (TZ, say, which compose gives every container) and comments are kept: other programs read them.
    """
    names = {declaration.name.upper() for declaration in declared()}
    lines: list[tuple[str | None, str]] = []  # (the variable it sets, the line)
    for binding in parse_stream(io.StringIO(text)):
        *blanks, line = binding.original.string.splitlines() or [""]  # blank lines come with the line after them
        lines += [(None, "")] * len(blanks) + [(binding.key, line.strip())]
    if [line for _, line in lines[: len(CONFIG_ENV_HEADER) + 1]] == [*CONFIG_ENV_HEADER, ""]:
        lines = lines[len(CONFIG_ENV_HEADER) + 1 :]
    written: dict[str, str] = {}
    after: dict[str, list[str]] = {"": []}
    follows, comments = "", []  # the setting the lines follow; comment lines a setting's line may come after
    for key, line in lines:
        if line.startswith("#"):
            comments.append(line)
        elif key in names:
            written[key], follows, comments = line, key, []
            after.setdefault(key, [])
        else:
            after[follows] += [*comments, line]
            comments = []
    after[follows] += comments
    return written, {setting: _without_trailing_blanks(kept) for setting, kept in after.items()}


def _without_trailing_blanks(lines: list[str]) -> list[str]:
    while lines and not lines[-1]:
        lines = lines[:-1]
    return lines


def render_table() -> str:
    """The README's settings table."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for declaration in declared():
        default = "set in config.env" if declaration.default is MISSING else f"`{_shown(declaration.default)}`"
        if declaration.default == "":
            default = "empty"
        rows.append(f"| `{declaration.name.upper()}` | {default} | {declaration.metadata['meaning']} |")
    return "\n".join(rows)


def updated_readme(text: str) -> str:
    """`text` with the part between the table markers replaced by render_table()."""
    if text.count(TABLE_START) != 1 or text.count(TABLE_END) != 1 or text.index(TABLE_START) > text.index(TABLE_END):
        raise SettingsError(f"the README needs one {TABLE_START} line and, after it, one {TABLE_END} line")
    before, _, rest = text.partition(TABLE_START)
    _, _, after = rest.partition(TABLE_END)
    return f"{before}{TABLE_START}\n{render_table()}\n{TABLE_END}{after}"


def _readme_text(readme: Path) -> str:
    """The README's text, read as UTF-8 as config.env is (not in the locale's encoding, which may be ASCII)."""
    try:
        return readme.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise SettingsError(f"not UTF-8 text (byte {error.object[error.start]:#x}): save it as UTF-8") from None
    except OSError as error:
        raise SettingsError(error.strerror) from None


def main(argv: list[str]) -> int:
    """`python -m servicekit.settings update CONFIG_ENV README`: 0, or one line on stderr and 1 (2: usage)."""
    usage = "usage: python -m servicekit.settings update CONFIG_ENV README"
    if argv in (["-h"], ["--help"]):  # as db.py answers it
        print(usage)
        return 0
    if len(argv) != 3 or argv[0] != "update":
        print(usage, file=sys.stderr)
        return 2
    config_env, readme = Path(argv[1]), Path(argv[2])
    try:
        if not config_env.exists():  # a mistyped name would be made afresh, every value empty, and yours left as it was
            raise SettingsError(f"there is no {config_env}")
        text = _text(config_env)
        current = _values(text, config_env.name)  # what the server would refuse is refused here, not rewritten
        if misspellings := misspelled(current):  # rewriting would drop the line, and its value with it
            raise SettingsError(f"{config_env.name}: {misspellings[0]}")
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        table = updated_readme(_readme_text(readme))
    except SettingsError as error:
        print(f"error: {readme}: {error}", file=sys.stderr)
        return 1
    config_env.write_text(render_config_env(text), encoding="utf-8")
    readme.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
