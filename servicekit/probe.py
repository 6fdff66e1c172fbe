"""Container probes: `python -m servicekit.probe ping|health [--timeout S]`, as client.py's commands answer.

Docker and Kubernetes run a probe every few seconds, and client.py loads thriftpy2 and parses the IDL first each
time; this speaks framed binary Thrift itself for the two calls every service on the kit answers, with client.py's
settings and exit statuses.
"""

import argparse
import socket
import ssl
import struct
import sys
import time
from pathlib import Path

from servicekit.addresses import called_at, host_port, parse_servers
from servicekit.binary_protocol import (
    BOOL,
    CALL,
    EXCEPTION,
    FIXED_SIZE,
    I32,
    LIST,
    MAP,
    REPLY,
    SET,
    STOP,
    STRING,
    STRUCT,
    UNSUPPORTED_CLIENT_TYPE,
    VERSION_1,
)
from servicekit.console import OneLineParser, print_result, seconds, to_stderr
from servicekit.exit_statuses import EXIT_INTERNAL, EXIT_UNAVAILABLE, EXIT_UNREACHABLE, EXIT_USAGE
from servicekit.settings import ClientSettings, SettingsError, load
from servicekit.tls import tls_context

CONFIG_FILE = Path(__file__).resolve().parent.parent / "config.env"
MAX_REPLY_BYTES = 65536  # a health reply is tens of bytes
MAX_NESTING = 16  # structs and containers within the result, as the server allows in a request


class UnexpectedReply(ValueError):
    """Bytes that are no reply of the call made."""


class TLSOnly(ConnectionError):
    """A TLS server's answer to plain text: no answer to this probe, as client.py reports it (exit 8)."""


class _Reader:
    """Reads binary-protocol values from a reply's bytes; UnexpectedReply past their end."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if size < 0 or self.at + size > len(self.data):
            raise UnexpectedReply("a reply shorter than it declares")
        self.at += size
        return self.data[self.at - size : self.at]

    def number(self, kind: str) -> int:
        return struct.unpack("!" + kind, self.take(struct.calcsize(kind)))[0]

    def fields(self):
        """(field id, type) of each field of the struct read next, until its STOP."""
        while (field_type := self.number("b")) != STOP:
            yield self.number("h"), field_type

    def skip(self, value_type: int, depth: int = 1) -> None:
        if depth > MAX_NESTING:
            raise UnexpectedReply(f"values nested more than {MAX_NESTING} deep")
        if value_type in FIXED_SIZE:
            self.take(FIXED_SIZE[value_type])
        elif value_type == STRING:
            self.take(self.number("i"))
        elif value_type == STRUCT:
            for _, field_type in self.fields():
                self.skip(field_type, depth + 1)
        elif value_type == MAP:
            key_type, item_type, count = self.number("b"), self.number("b"), self.number("i")
            for _ in range(count):
                self.skip(key_type, depth + 1)
                self.skip(item_type, depth + 1)
        elif value_type in (SET, LIST):
            element_type, count = self.number("b"), self.number("i")
            for _ in range(count):
                self.skip(element_type, depth + 1)
        else:
            raise UnexpectedReply(f"a value of unknown type {value_type}")


def call_bytes(method: str) -> bytes:
    """A framed binary CALL of `method` with no arguments."""
    name = method.encode()
    message = struct.pack("!Ii", VERSION_1 | CALL, len(name)) + name + struct.pack("!ib", 0, STOP)
    return struct.pack("!i", len(message)) + message


def reply_result(message: bytes, method: str, result_type: int) -> _Reader:
    """A reader at the value of a REPLY of `method`: its result's field 0, of `result_type`."""
    reader = _Reader(message)
    header = reader.number("I")
    if header & 0xFFFF0000 != VERSION_1:
        raise UnexpectedReply(f"a reply that starts {message[:12]!r}, not binary Thrift")
    name = reader.take(reader.number("i")).decode(errors="replace")
    reader.number("i")  # the sequence id: one call per connection
    if header & 0xFF == EXCEPTION:
        error_type, error = application_error(reader)
        if error_type == UNSUPPORTED_CLIENT_TYPE:
            raise TLSOnly(error)
        raise UnexpectedReply(f"the server refused {method}: {error}")
    if header & 0xFF != REPLY:
        raise UnexpectedReply(f"a message of type {header & 0xFF}, not a reply")
    if name != method:
        raise UnexpectedReply(f"a reply of {name!r}, not of {method}")
    for field_id, field_type in reader.fields():
        if field_id == 0 and field_type == result_type:
            return reader
        reader.skip(field_type)
    raise UnexpectedReply(f"a reply of {method} without its result")


def application_error(reader: _Reader) -> tuple[int, str]:
    """The type and message of a TApplicationException (its fields 2 and 1)."""
    error_type, message = 0, "no message"
    for field_id, field_type in reader.fields():
        if field_id == 1 and field_type == STRING:
            message = reader.take(reader.number("i")).decode(errors="replace")
        elif field_id == 2 and field_type == I32:
            error_type = reader.number("i")
        else:
            reader.skip(field_type)
    return error_type, message


def health_status(reader: _Reader) -> tuple[bool, bool, str]:
    """serving, database and version from a Health struct."""
    found = {1: False, 2: False, 3: b""}
    for field_id, field_type in reader.fields():
        if field_id in (1, 2) and field_type == BOOL:
            found[field_id] = reader.number("b") != 0
        elif field_id == 3 and field_type == STRING:
            found[3] = reader.take(reader.number("i"))
        else:
            reader.skip(field_type)
    return found[1], found[2], found[3].decode(errors="replace")


def exchange(address: tuple[str, int], tls: ssl.SSLContext | None, method: str, timeout: float) -> bytes:
    """Send `method`'s call to `address` and return the reply's message, all within `timeout`."""
    ends = time.monotonic() + timeout
    sock = socket.create_connection(address, timeout=timeout)
    if tls:
        sock.settimeout(_left(ends))  # the handshake
        sock = tls.wrap_socket(sock, server_hostname=address[0])
    with sock:
        sock.settimeout(_left(ends))
        sock.sendall(call_bytes(method))
        received = bytearray()
        while (end := _frame_end(received)) is None or len(received) < end:
            sock.settimeout(_left(ends))  # the whole reply within the timeout, however it trickles in
            if not (chunk := sock.recv(65536)):
                raise ConnectionError("the server closed the connection before its reply")
            received += chunk
        return bytes(received[4:end])


def _left(ends: float) -> float:
    """Seconds left until `ends` (time.monotonic()); TimeoutError if none."""
    if (left := ends - time.monotonic()) <= 0:
        raise TimeoutError("timed out")
    return left


def _frame_end(received: bytearray) -> int | None:
    """Where the frame that `received` begins ends, once its length is in; UnexpectedReply if implausible."""
    if len(received) < 4:
        return None
    length = struct.unpack_from("!i", received)[0]
    if not 0 < length <= MAX_REPLY_BYTES:
        raise UnexpectedReply(f"a reply that starts {bytes(received[:12])!r}, not framed binary Thrift")
    return 4 + length


def parsed(arguments: list[str]) -> argparse.Namespace:
    parser = OneLineParser(prog="python -m servicekit.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("call", choices=("ping", "health"))
    parser.add_argument("--timeout", type=seconds, help="seconds for the whole call (default: CLIENT_TIMEOUT)")
    return parser.parse_args(arguments)


def client_tls(settings: ClientSettings) -> ssl.SSLContext | None:
    """The CLIENT_TLS_* settings' context (None without CLIENT_TLS_CA); OSError if their files cannot be loaded."""
    if not settings.client_tls_ca:
        return None
    return tls_context(settings.client_tls_ca, settings.client_tls_cert, settings.client_tls_key)


def main(arguments: list[str]) -> int:
    """Probe with client.py's settings (config.env beside the service, then the environment); the exit status.

    0 answered (health: serving and database up), 7 not serving or database
    down, 8 no answer (a TLS server's "TLS only" too), 1 an answer that is no
    reply of this call, 2 a bad argument or setting.
    """
    options = parsed(arguments)  # exits 2 with a usage line if they are wrong
    try:
        settings = load(ClientSettings, CONFIG_FILE)
        tls = client_tls(settings)
    except SettingsError as error:
        return _failed(str(error), EXIT_USAGE)
    except OSError as error:  # as client.py says it
        return _failed(f"cannot load the TLS files (CLIENT_TLS_*): {error.strerror or error}", EXIT_USAGE)
    address = (called_at(settings.thrift_host), settings.thrift_port)
    try:  # as client.py checks it: else a mistyped THRIFT_HOST would read as a server that does not answer
        parse_servers(host_port(*address))
    except ValueError:
        return _failed(f"THRIFT_HOST must be a host name or IP address, not {settings.thrift_host!r}", EXIT_USAGE)
    try:
        message = exchange(address, tls, options.call, options.timeout or settings.client_timeout)
        if options.call == "ping":
            result = reply_result(message, "ping", STRING)
            return _shown(result.take(result.number("i")).decode(errors="replace"), 0)
        serving, database, version = health_status(reply_result(message, "health", STRUCT))
    except UnexpectedReply as error:
        return _failed(str(error), EXIT_INTERNAL)
    except OSError as error:  # refused, timed out, reset, TLS refused (ssl.SSLError is one), TLS only
        return _failed(f"no answer from {host_port(*address)} ({error})", EXIT_UNREACHABLE)
    status = 0 if serving and database else EXIT_UNAVAILABLE
    return _shown(f"serving: {serving}, database: {database}, version: {version}", status)


def _shown(answer: str, status: int) -> int:
    """`status`, once `answer` is on stdout; as client.py, 1 if stdout cannot take it."""
    return status if print_result(answer) else EXIT_INTERNAL


def _failed(message: str, status: int) -> int:
    to_stderr(f"error: {message}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
