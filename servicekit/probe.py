"""Container probes: `python -m servicekit.probe ping|health [--timeout S]`, as client.py's commands answer.

Docker and Kubernetes run a probe every few seconds. client.py loads thriftpy2
and parses the IDL first (about 0.25 s of CPU each time); this speaks framed
binary Thrift itself for the two calls every service on the kit answers, with
client.py's settings (config.env beside the service, then the environment) and
exit statuses: 0 answered (health: serving and database up), 7 not serving or
database down, 8 no answer, 1 an answer that is no reply of this call, 2 usage.
"""

import argparse
import socket
import struct
import sys
import time
from pathlib import Path

from servicekit.addresses import called_at
from servicekit.settings import ClientSettings, SettingsError, load
from servicekit.tls import tls_context

CONFIG_FILE = Path(__file__).resolve().parent.parent / "config.env"
EXIT_USAGE, EXIT_UNEXPECTED, EXIT_UNAVAILABLE, EXIT_UNREACHABLE = 2, 1, 7, 8
VERSION_1, CALL, REPLY, EXCEPTION = 0x80010000, 1, 2, 3
STOP, BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST = 0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15
FIXED_SIZES = {BOOL: 1, BYTE: 1, DOUBLE: 8, I16: 2, I32: 4, I64: 8}
MAX_REPLY_BYTES = 1 << 20  # a health reply is tens of bytes


class UnexpectedReply(ValueError):
    """Bytes that are no reply of the call made."""


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

    def skip(self, value_type: int) -> None:
        if value_type in FIXED_SIZES:
            self.take(FIXED_SIZES[value_type])
        elif value_type == STRING:
            self.take(self.number("i"))
        elif value_type == STRUCT:
            for _, field_type in self.fields():
                self.skip(field_type)
        elif value_type == MAP:
            key_type, item_type, count = self.number("b"), self.number("b"), self.number("i")
            for _ in range(count):
                self.skip(key_type)
                self.skip(item_type)
        elif value_type in (SET, LIST):
            element_type, count = self.number("b"), self.number("i")
            for _ in range(count):
                self.skip(element_type)
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
        raise UnexpectedReply(f"the server refused {method}: {application_error(reader)}")
    if header & 0xFF != REPLY:
        raise UnexpectedReply(f"a message of type {header & 0xFF}, not a reply")
    if name != method:
        raise UnexpectedReply(f"a reply of {name!r}, not of {method}")
    for field_id, field_type in reader.fields():
        if field_id == 0 and field_type == result_type:
            return reader
        reader.skip(field_type)
    raise UnexpectedReply(f"a reply of {method} without its result")


def application_error(reader: _Reader) -> str:
    """The message of a TApplicationException (its field 1)."""
    for field_id, field_type in reader.fields():
        if field_id == 1 and field_type == STRING:
            return reader.take(reader.number("i")).decode(errors="replace")
        reader.skip(field_type)
    return "no message"


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


def exchange(settings: ClientSettings, host: str, method: str, timeout: float) -> bytes:
    """Send `method`'s call to host:THRIFT_PORT and return the reply's message, all within `timeout`."""
    ends = time.monotonic() + timeout
    plain = socket.create_connection((host, settings.thrift_port), timeout=timeout)
    if settings.client_tls_ca:
        tls = tls_context(settings.client_tls_ca, settings.client_tls_cert, settings.client_tls_key)
        plain = tls.wrap_socket(plain, server_hostname=host)
    with plain as sock:
        sock.sendall(call_bytes(method))
        received = b""
        while (end := _frame_end(received)) is None or len(received) < end:
            sock.settimeout(max(0.001, ends - time.monotonic()))  # the whole reply within the timeout
            if not (chunk := sock.recv(65536)):
                raise ConnectionError("the server closed the connection before its reply")
            received += chunk
        return received[4:end]


def _frame_end(received: bytes) -> int | None:
    """Where the frame that `received` begins ends, once its length is in; UnexpectedReply if implausible."""
    if len(received) < 4:
        return None
    length = struct.unpack("!i", received[:4])[0]
    if not 0 < length <= MAX_REPLY_BYTES:
        raise UnexpectedReply(f"a reply that starts {received[:12]!r}, not framed binary Thrift")
    return 4 + length


def seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError(text)
    return value


def parsed(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m servicekit.probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("call", choices=("ping", "health"))
    parser.add_argument("--timeout", type=seconds, help="seconds for the whole call (default: CLIENT_TIMEOUT)")
    return parser.parse_args(arguments)


def main(arguments: list[str]) -> int:
    options = parsed(arguments)  # exits 2 with a usage line if they are wrong
    try:
        settings = load(ClientSettings, CONFIG_FILE)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    host = called_at(settings.thrift_host)
    try:
        message = exchange(settings, host, options.call, options.timeout or settings.client_timeout)
        if options.call == "ping":
            result = reply_result(message, "ping", STRING)
            print(result.take(result.number("i")).decode(errors="replace"))
            return 0
        serving, database, version = health_status(reply_result(message, "health", STRUCT))
    except UnexpectedReply as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_UNEXPECTED
    except OSError as error:  # refused, timed out, reset, TLS refused (ssl.SSLError is one)
        print(f"error: no answer from {host}:{settings.thrift_port} ({error})", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"serving: {serving}, database: {database}, version: {version}")
    return 0 if serving and database else EXIT_UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
