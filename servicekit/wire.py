"""Wire checks: which Thrift a connection speaks, and each message's shape before thriftpy2 decodes it.

The engine calls `detect()` on a connection's first bytes (framed or not,
strict binary or compact), then checks every message before a decoder sees
it: thriftpy2 allocates whatever a message declares, so every declared
length and container size must fit in the bytes the message may occupy and
nesting is limited. `known_calls()` matches in one step the calls whose
every length the IDL fixes; `walk()` checks any other and finds where an
unframed message ends.
"""

import re
import struct
from collections.abc import Callable, Generator
from typing import NamedTuple

STOP, BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST = 0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15
BINARY = 18  # thriftpy2's type for `binary` in an IDL; a string on the wire
FIXED_SIZE = {BOOL: 1, BYTE: 1, DOUBLE: 8, I16: 2, I32: 4, I64: 8}
# The fewest bytes a value of each type takes in the binary protocol: what a
# container's element count is multiplied by before any element is read.
SMALLEST = {**FIXED_SIZE, STRING: 4, STRUCT: 1, MAP: 5, SET: 5, LIST: 5}
VERSION_1 = 0x80010000
COMPACT_ID, COMPACT_VERSION = 0x82, 1
# Compact type codes and the types they carry (true and false are both bool).
COMPACT_TYPES = {
    1: BOOL, 2: BOOL, 3: BYTE, 4: I16, 5: I32, 6: I64, 7: DOUBLE, 8: STRING, 9: LIST, 10: SET, 11: MAP, 12: STRUCT,
}  # fmt: skip
VARINT_BITS = {I16: 16, I32: 32, I64: 64}
FRAME_HEADER = struct.Struct("!i")
I32_AT = struct.Struct("!i").unpack_from
I16_AT = struct.Struct("!h").unpack_from
CALL = 1  # the message type of a call
CALL_HEADER = struct.Struct("!Ii")  # a binary message's version and type, and its name's length
FIELD_HEADER = struct.Struct("!Bh")  # a binary field's type and id
# A spec lookup: the thrift_spec of a method's arguments, None for a method the service lacks.
SpecOf = Callable[[str], dict | None]


class MalformedMessage(ValueError):
    """The bytes are not a well-formed message within the limits."""


class Codec(NamedTuple):
    """How one connection's messages are delimited and encoded."""

    framed: bool
    compact: bool

    def __str__(self) -> str:
        return f"{'framed' if self.framed else 'unframed'} {'compact' if self.compact else 'binary'}"


class Message(NamedTuple):
    name: str
    argument_types: dict[int, int]  # the type of each top-level argument, by field id
    end: int  # the message's length in bytes


# One instance of each: the server tests a connection's codec by identity, which costs less than a comparison.
CODECS = {(framed, compact): Codec(framed, compact) for framed in (False, True) for compact in (False, True)}
FRAMED_BINARY = CODECS[True, False]


def detect(start: bytes | bytearray, max_message_bytes: int) -> Codec | None:
    """The codec a connection speaks, from its first bytes; None until enough have arrived.

    An unframed message starts with its protocol's marker (0x80 0x01 binary,
    0x82 compact); otherwise the first 4 bytes are a frame length, and the
    message it frames starts with one of those markers.
    """
    if not start:
        return None
    if start[0] in (0x80, COMPACT_ID):
        return CODECS[False, start[0] == COMPACT_ID]
    if len(start) < FRAME_HEADER.size:
        return None
    try:
        frame_size(start, max_message_bytes)  # refuses a length no message can have
    except MalformedMessage as error:
        raise MalformedMessage(_other_protocol(start) or str(error)) from None
    if len(start) == FRAME_HEADER.size:
        return None
    marker = start[FRAME_HEADER.size]
    if marker not in (0x80, COMPACT_ID):
        raise MalformedMessage("neither a framed nor an unframed binary or compact Thrift message")
    return CODECS[True, marker == COMPACT_ID]


def _other_protocol(start: bytes | bytearray) -> str | None:
    """What a client that is not speaking Thrift seems to speak, for the log; None if nothing recognisable.

    Read as a frame length, its first bytes are hundreds of megabytes: the
    log would suggest raising THRIFT_MAX_MESSAGE_BYTES, which would not help.
    """
    if start[:2] == b"\x16\x03":
        return "a TLS handshake, to a port that serves plain TCP"
    if re.match(rb"[A-Z]+ ", start):
        return "an HTTP request, to a port that serves Thrift"
    if start[:1] == b"[":
        return "Thrift's JSON protocol, which this server does not speak"
    return None


def frame_size(buffer: bytes | bytearray, max_message_bytes: int) -> int:
    """The length a frame header declares, refused unless 1..max_message_bytes."""
    (size,) = FRAME_HEADER.unpack_from(buffer)
    if not 0 < size <= max_message_bytes:
        raise MalformedMessage(f"frame of {size} bytes (maximum {max_message_bytes})")
    return size


def walk(
    buffer: bytes | bytearray, limit: int | None, compact: bool, spec_of: SpecOf, max_depth: int = 16
) -> Generator[Message | None, None, None]:
    """Walk the message at the start of `buffer`, which may take up to `limit` bytes (None: all of `buffer`).

    A generator, advanced with resume(): it yields None while the message
    runs past the bytes present (bytes appended to a bytearray `buffer` are
    seen when it is resumed), then the Message. It raises MalformedMessage as
    soon as the bytes cannot be a well-formed message within the limit.
    """
    if compact:
        return _CompactWalk(buffer, limit, max_depth, spec_of).message()
    return _BinaryWalk(buffer, limit, max_depth).message()


def walk_whole(buffer: bytes, compact: bool, spec_of: SpecOf, max_depth: int = 16) -> Message:
    """Walk a message that must fill `buffer` exactly (a frame's payload)."""
    message = resume(walk(buffer, None, compact, spec_of, max_depth))
    if message is None:
        raise MalformedMessage("message ends early")
    if message.end != len(buffer):
        raise MalformedMessage(f"{len(buffer) - message.end} bytes after the message")
    return message


def known_calls(specs: dict[str, dict]) -> re.Pattern:
    """What matches, byte for byte, a strict binary call whose arguments are
    all numbers, all present, in declared order: the shape thriftpy2 and
    Apache Thrift write, for any method in `specs` (thrift_specs by name).

    Such a message needs no walk: its every length is fixed by the IDL. One
    regular expression tests it in one C call, several times cheaper than the
    walk; anything else (strings, structs, containers, a missing or
    reordered argument) is walked. A service without such methods gets a
    pattern that matches nothing.
    """
    shapes = []
    for name, spec in specs.items():
        if all(field[0] in FIXED_SIZE for field in spec.values()):
            encoded = name.encode()
            shape = re.escape(CALL_HEADER.pack(VERSION_1 | CALL, len(encoded)) + encoded) + b".{4}"  # sequence id
            for field_id, field in spec.items():
                shape += re.escape(FIELD_HEADER.pack(field[0], field_id)) + b".{%d}" % FIXED_SIZE[field[0]]
            shapes.append(shape + re.escape(bytes([STOP])))
    return re.compile(b"|".join(shapes) or b"(?!)", re.DOTALL)


def resume(walking: Generator[Message | None, None, None]) -> Message | None:
    """Continue a walk: its Message once complete, None while more bytes are needed."""
    return next(walking)


def field_type(spec: tuple) -> tuple[int, object]:
    """A struct field's thrift_spec entry -> its type and, for a container or struct, what it holds."""
    return spec[0], spec[2] if len(spec) == 4 else None


def element_type(held: int | tuple) -> tuple[int, object]:
    """A container's element type as thriftpy2 writes it (a bare type, or a pair) -> type and what it holds."""
    return (held, None) if isinstance(held, int) else held


def check_argument_types(method: str, argument_types: dict[int, int], spec: dict | None) -> None:
    """Reject an argument of the wrong type, which thriftpy2 would silently drop.

    `spec` is the thrift_spec of the method's arguments; None (a method the
    service lacks) passes, to be answered with UNKNOWN_METHOD.
    """
    for field_id, field_type in argument_types.items():
        declared = (spec or {}).get(field_id)
        if declared and _wire_type(declared[0]) != field_type:
            raise MalformedMessage(f"argument {declared[1]!r} of {method} has type {field_type}, not {declared[0]}")


def _wire_type(declared: int) -> int:
    return STRING if declared == BINARY else declared


class _Walk:
    """Position and limits shared by both protocols' walks."""

    def __init__(self, buffer: bytes | bytearray, limit: int | None, max_depth: int) -> None:
        self.buffer = buffer
        self.position = 0
        self.whole = limit is None  # the buffer is the whole message: running past it is ending early
        self.limit = len(buffer) if limit is None else limit
        self.max_depth = max_depth

    def have(self, count: int) -> bool:
        """Whether the next `count` bytes are present; raises if the message may not reach them."""
        end = self.position + count
        if end > self.limit:
            raise MalformedMessage("message ends early" if self.whole else f"message longer than {self.limit} bytes")
        return end <= len(self.buffer)

    def check_length(self, length: int) -> None:
        if not 0 <= length <= self.limit - self.position:
            raise MalformedMessage(f"declared length {length} but {self.limit - self.position} bytes remain")

    def check_count(self, count: int, smallest: int) -> None:
        if count < 0 or count * smallest > self.limit - self.position:
            raise MalformedMessage(f"container of {count} elements cannot fit in {self.limit - self.position} bytes")

    def deeper(self, depth: int) -> int:
        if depth >= self.max_depth:
            raise MalformedMessage(f"nested deeper than {self.max_depth}")
        return depth + 1

    def name(self, start: int, length: int) -> str:
        return str(self.buffer[start : start + length], "utf-8", "replace")


class _BinaryWalk(_Walk):
    def message(self) -> Generator[Message | None, None, None]:
        while not self.have(8):
            yield
        version, name_length = I32_AT(self.buffer, 0)[0], I32_AT(self.buffer, 4)[0]
        if version >= 0 or (version & 0xFFFF0000) != VERSION_1:
            raise MalformedMessage("not a strict binary-protocol message")
        self.position = 8
        self.check_length(name_length)
        while not self.have(name_length + 4):  # the name and the sequence id
            yield
        name = self.name(8, name_length)
        self.position += name_length + 4
        buffer, arguments = self.buffer, {}
        while True:
            # Every field is followed by another or by STOP, whose read checks
            # that the field's bytes are present: fixed-size values and
            # strings are skipped here without a check of their own.
            while not self.have(1):
                yield
            field_type = buffer[self.position]
            if field_type == STOP:
                self.position += 1
                yield Message(name, arguments, self.position)
                return
            while not self.have(3):
                yield
            arguments[I16_AT(buffer, self.position + 1)[0]] = field_type
            self.position += 3
            if field_type in FIXED_SIZE:
                self.position += FIXED_SIZE[field_type]
            elif field_type == STRING:
                while not self.have(4):
                    yield
                length = I32_AT(buffer, self.position)[0]
                self.position += 4
                self.check_length(length)
                self.position += length
            else:
                yield from self.value(field_type, 1)

    def value(self, kind: int, depth: int) -> Generator[None, None, None]:
        if kind in FIXED_SIZE:
            while not self.have(FIXED_SIZE[kind]):
                yield
            self.position += FIXED_SIZE[kind]
        elif kind == STRING:
            while not self.have(4):
                yield
            length = I32_AT(self.buffer, self.position)[0]
            self.position += 4
            self.check_length(length)
            while not self.have(length):
                yield
            self.position += length
        elif kind == STRUCT:
            yield from self.struct(self.deeper(depth))
        elif kind in (MAP, SET, LIST):
            yield from self.container(kind, self.deeper(depth))
        else:
            raise MalformedMessage(f"unknown type {kind}")

    def struct(self, depth: int) -> Generator[None, None, None]:
        while True:
            while not self.have(1):
                yield
            field_type = self.buffer[self.position]
            if field_type == STOP:
                self.position += 1
                return
            while not self.have(3):
                yield
            self.position += 3  # the type and the field id
            yield from self.value(field_type, depth)

    def container(self, kind: int, depth: int) -> Generator[None, None, None]:
        header = 6 if kind == MAP else 5
        while not self.have(header):
            yield
        types = tuple(self.buffer[self.position : self.position + header - 4])
        count = I32_AT(self.buffer, self.position + header - 4)[0]
        self.position += header
        if any(t not in SMALLEST for t in types):
            raise MalformedMessage(f"unknown element type in {types}")
        self.check_count(count, sum(SMALLEST[t] for t in types))
        if all(t in FIXED_SIZE for t in types):
            size = count * sum(FIXED_SIZE[t] for t in types)
            while not self.have(size):
                yield
            self.position += size
            return
        for _ in range(count):
            for element_type in types:
                yield from self.value(element_type, depth)


class _CompactWalk(_Walk):
    """The compact protocol, checked against the declared types where thriftpy2 reads by them.

    thriftpy2's compact decoder reads a list's or map's elements as the IDL
    declares them, whatever type the message names; so where a field is
    declared, its elements must be of the declared type.
    """

    def __init__(self, buffer: bytes | bytearray, limit: int | None, max_depth: int, spec_of: SpecOf) -> None:
        super().__init__(buffer, limit, max_depth)
        self.spec_of = spec_of

    def message(self) -> Generator[Message | None, None, None]:
        while not self.have(2):
            yield
        if self.buffer[0] != COMPACT_ID or self.buffer[1] & 0x1F != COMPACT_VERSION:
            raise MalformedMessage("not a compact-protocol message")
        self.position = 2
        yield from self.varint(32)  # sequence id
        name_length = yield from self.varint(32)
        self.check_length(name_length)
        while not self.have(name_length):
            yield
        name = self.name(self.position, name_length)
        self.position += name_length
        arguments: dict[int, int] = {}
        yield from self.struct(self.spec_of(name), 1, arguments)
        yield Message(name, arguments, self.position)

    def varint(self, bits: int) -> Generator[None, None, int]:
        """An unsigned varint of at most `bits` bits."""
        most = (bits + 6) // 7
        while True:
            value, shift = 0, 0
            for offset in range(most):
                if not self.have(offset + 1):
                    break
                byte = self.buffer[self.position + offset]
                value |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    if value >> bits:
                        raise MalformedMessage(f"varint of more than {bits} bits")
                    self.position += offset + 1
                    return value
            else:
                raise MalformedMessage(f"varint longer than {most} bytes")
            yield

    def byte(self) -> Generator[None, None, int]:
        while not self.have(1):
            yield
        self.position += 1
        return self.buffer[self.position - 1]

    def struct(self, spec: dict | None, depth: int, types: dict[int, int]) -> Generator[None, None, None]:
        """Fields until STOP; `types` gets each field's type by id."""
        last_id = 0
        while True:
            header = yield from self.byte()
            if header & 0x0F == STOP:
                return
            if header >> 4:
                field_id = last_id + (header >> 4)
            else:
                zigzag = yield from self.varint(16)
                field_id = (zigzag >> 1) ^ -(zigzag & 1)
            last_id = field_id
            kind = self.kind(header & 0x0F)
            types[field_id] = kind
            declared = spec.get(field_id) if spec else None
            if declared and _wire_type(declared[0]) == kind and len(declared) == 4:
                inner = declared[2].thrift_spec if kind == STRUCT else declared[2]
            else:
                inner = None  # not declared: thriftpy2 skips it as the message says
            if kind != BOOL:  # a bool field's value is in its type
                yield from self.value(kind, depth, inner)

    def kind(self, compact_type: int) -> int:
        if compact_type not in COMPACT_TYPES:
            raise MalformedMessage(f"unknown compact type {compact_type}")
        return COMPACT_TYPES[compact_type]

    def value(self, kind: int, depth: int, inner) -> Generator[None, None, None]:
        """One value of type `kind`; `inner` is what the IDL declares inside it (a spec), None if unknown."""
        if kind in (BOOL, BYTE):
            yield from self.byte()
        elif kind in VARINT_BITS:
            yield from self.varint(VARINT_BITS[kind])
        elif kind == DOUBLE:
            while not self.have(8):
                yield
            self.position += 8
        elif kind == STRING:
            length = yield from self.varint(31)
            self.check_length(length)
            while not self.have(length):
                yield
            self.position += length
        elif kind == STRUCT:
            yield from self.struct(inner, self.deeper(depth), {})
        else:
            yield from self.container(kind, self.deeper(depth), inner)

    def container(self, kind: int, depth: int, inner) -> Generator[None, None, None]:
        if kind == MAP:
            count = yield from self.varint(31)
            key_value = (yield from self.byte()) if count else 0
            elements = [(self.kind(key_value >> 4), 0), (self.kind(key_value & 0x0F), 1)] if count else []
        else:
            size_type = yield from self.byte()
            count = size_type >> 4
            if count == 15:
                count = yield from self.varint(31)
            elements = [(self.kind(size_type & 0x0F), None)]
        self.check_count(count, len(elements))  # every compact value takes at least a byte
        declared = [self.declared(kind, inner, element, which) for element, which in elements]
        for _ in range(count):
            for (element, _), element_inner in zip(elements, declared, strict=True):
                yield from self.value(element, depth, element_inner)

    def declared(self, kind: int, inner, element: int, which: int | None):
        """What the IDL declares inside an element of this container, checked against `element`."""
        if inner is None:
            return None
        spec = inner[which] if kind == MAP else inner
        declared_type, element_inner = (spec, None) if isinstance(spec, int) else spec
        if _wire_type(declared_type) != element:
            raise MalformedMessage(f"container element of type {element} where {declared_type} is declared")
        return element_inner.thrift_spec if element == STRUCT else element_inner
