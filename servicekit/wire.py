"""Wire checks: which Thrift a connection speaks, and each message's shape before thriftpy2 decodes it.

The engine calls `detect()` on a connection's first bytes, then checks every message here: thriftpy2 allocates
whatever a message declares, so every declared length and container size must fit in the bytes the message may
occupy, and nesting is limited. `known_calls()` matches fixed-length calls in one step; `walk()` checks any other.
"""

import re
import struct
from collections.abc import Callable
from typing import NamedTuple

from servicekit.binary_protocol import (
    BOOL,
    BYTE,
    CALL,
    DOUBLE,
    FIXED_SIZE,
    I16,
    I32,
    I64,
    LIST,
    MAP,
    ONE_WAY,
    SET,
    STOP,
    STRING,
    STRUCT,
    VERSION_1,
)

BINARY = 18  # thriftpy2's type for `binary` in an IDL; a string on the wire
# The fewest bytes a value of each type takes in the binary protocol: what a
# container's element count is multiplied by before any element is read.
SMALLEST = {**FIXED_SIZE, STRING: 4, STRUCT: 1, MAP: 5, SET: 5, LIST: 5}
COMPACT_ID, COMPACT_VERSION = 0x82, 1
# Compact type codes and the types they carry (true and false are both bool).
COMPACT_TYPES = {
    1: BOOL, 2: BOOL, 3: BYTE, 4: I16, 5: I32, 6: I64, 7: DOUBLE, 8: STRING, 9: LIST, 10: SET, 11: MAP, 12: STRUCT,
}  # fmt: skip
VARINT_BITS = {I16: 16, I32: 32, I64: 64}
TYPE_NAMES = {
    BOOL: "bool", BYTE: "byte", DOUBLE: "double", I16: "i16", I32: "i32", I64: "i64", STRING: "string",
    STRUCT: "struct", MAP: "map", SET: "set", LIST: "list", BINARY: "binary",
}  # fmt: skip
FRAME_HEADER = struct.Struct("!i")
EMPTY_FRAME = FRAME_HEADER.pack(0)  # a frame with no message, which a framed client may flush
EMPTY_FRAMES = re.compile(b"(?:" + re.escape(EMPTY_FRAME) + b")*")  # any run of them, found in one C call
I32_AT = struct.Struct("!i").unpack_from
I16_AT = struct.Struct("!h").unpack_from
CALL_HEADER = struct.Struct("!Ii")  # a binary message's version and type, and its name's length
FIELD_HEADER = struct.Struct("!Bh")  # a binary field's type and id
# A spec lookup: the thrift_spec of a method's arguments, None for a method the service lacks.
SpecOf = Callable[[str], dict | None]
TEXT = frozenset(b"\t\n\r" + bytes(range(0x20, 0x7F)))  # printable ASCII and the white space of text protocols
HEADER_TRANSPORT = b"\x0f\xff"  # the magic after the length of fbthrift's and Apache's header transport
TLS_HANDSHAKE = b"\x16\x03"  # how a TLS handshake record begins (its type, then its version's major)


class MalformedMessage(ValueError):
    """The bytes are not a well-formed message within the limits."""


class Call(NamedTuple):
    """What a message's header says of the call: what an error reply answers, if the client reads one."""

    name: str
    seqid: int
    one_way: bool


class OffContract(MalformedMessage):
    """A well-formed call that the IDL does not allow (an argument of another type, a string that is not UTF-8):
    a client whose IDL drifted, to be told why in an error reply (unless its call is one-way)."""

    def __init__(self, message: str, call: Call) -> None:
        super().__init__(message)
        self.call = call


class TooLong(OffContract):
    """A call longer than the server's THRIFT_MAX_MESSAGE_BYTES: its client is told, then the connection is closed
    (the rest of its bytes are not read)."""


class TLSToPlainPort(MalformedMessage):
    """The bytes begin a TLS handshake, sent to a port that serves plain TCP."""


class Codec(NamedTuple):
    """How one connection's messages are delimited and encoded."""

    framed: bool
    compact: bool

    def __str__(self) -> str:
        return f"{'framed' if self.framed else 'unframed'} {'compact' if self.compact else 'binary'}"


class Message(NamedTuple):
    name: str
    seqid: int
    argument_types: dict[int, int]  # the type of each top-level argument, by field id
    end: int  # the message's length in bytes
    one_way: bool = False


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
    if start[:2] == TLS_HANDSHAKE:  # a frame of over 369 MB otherwise, whatever THRIFT_MAX_MESSAGE_BYTES allows
        raise TLSToPlainPort("a TLS handshake, to a port that serves plain TCP")
    if (codec := _framed_codec(start)) and I32_AT(start)[0] > 0:
        return codec  # its length is checked with the message (frame_size)
    try:
        # No message follows yet, or not Thrift: refuses a length none can have. A length over the maximum
        # alone, the first thing a connection sends, is not waited on: garbage reads as one.
        if frame_size(start, max_message_bytes) is None:
            raise MalformedMessage(f"frame of {I32_AT(start)[0]} bytes (maximum {max_message_bytes})")
    except MalformedMessage as error:
        raise MalformedMessage(_other_protocol(start) or str(error)) from None
    if len(start) == FRAME_HEADER.size:
        return None
    if start[FRAME_HEADER.size : FRAME_HEADER.size + 2] == HEADER_TRANSPORT:
        raise MalformedMessage("Thrift's header transport, which this server does not speak")
    framed = _other_protocol(start[FRAME_HEADER.size :], framed=True)
    raise MalformedMessage(framed or "neither a framed nor an unframed strict binary or compact Thrift message")


def _framed_codec(start: bytes | bytearray) -> Codec | None:
    """The codec of the message after a frame's length, once its first byte (the protocol's marker) is there."""
    if len(start) > FRAME_HEADER.size and start[FRAME_HEADER.size] in (0x80, COMPACT_ID):
        return CODECS[True, start[FRAME_HEADER.size] == COMPACT_ID]
    return None


def _other_protocol(start: bytes | bytearray, framed: bool = False) -> str | None:
    """What a client that is not speaking Thrift seems to speak, for the log; None if nothing recognisable.

    Read as a frame length, its first bytes are hundreds of megabytes: the
    log would suggest raising THRIFT_MAX_MESSAGE_BYTES, which would not help.
    `framed`: `start` follows a frame's length, where the old non-strict
    binary protocol puts a method name, which is text too.
    """
    if re.match(rb"[A-Z]+ ", start):
        return "an HTTP request, to a port that serves Thrift"
    if start[:1] == b"[":
        return "Thrift's JSON protocol, which this server does not speak"
    if start[:1] == b"\x78" and int.from_bytes(start[:2], "big") % 31 == 0:  # a zlib stream's header (RFC 1950)
        return "a zlib stream (Thrift's TZlibTransport), which this server does not speak"
    if not framed and all(byte in TEXT for byte in start[:4]):  # as a frame's length, over 150 MB
        return f"text ({bytes(start[:16])!r}), not a Thrift message"
    return None


def frame_size(buffer: bytes | bytearray, max_message_bytes: int) -> int | None:
    """The length a frame header declares, refused unless 1..max_message_bytes. Past it, a call whose header
    came is TooLong (its client is told, as one whose limit is higher than the server's); None while the
    bytes after the length may yet be such a header, so the refusal does not depend on how they arrive
    (on a connection already framed: see detect for its first bytes)."""
    (size,) = FRAME_HEADER.unpack_from(buffer)
    if 0 < size <= max_message_bytes:
        return size
    if size > 0 and len(buffer) == FRAME_HEADER.size:
        return None
    refused = MalformedMessage(f"frame of {size} bytes (maximum {max_message_bytes})")
    if size <= 0 or (codec := _framed_codec(buffer)) is None:
        raise refused
    try:
        call = call_header(buffer, codec, max_message_bytes)
    except MalformedMessage:  # what follows cannot be a call's header
        raise refused from None
    if call is None:
        return None
    over = f"a request of {size} bytes, over the server's maximum of {max_message_bytes} (THRIFT_MAX_MESSAGE_BYTES)"
    raise TooLong(over, call)


def walk(buffer: bytes | bytearray, limit: int | None, compact: bool, spec_of: SpecOf, max_depth: int = 16) -> "_Walk":
    """Begin walking the message at the start of `buffer`, which may take up to `limit` bytes (None: all of `buffer`).

    Advance the walk with resume(): it gives None while the message runs past
    the bytes present (bytes appended to a bytearray `buffer` are seen when
    it is resumed), then the Message. It raises MalformedMessage as soon as
    the bytes cannot be a well-formed message within the limit.
    """
    return (_CompactWalk if compact else _BinaryWalk)(buffer, limit, max_depth, spec_of)


def walk_whole(buffer: bytes, compact: bool, spec_of: SpecOf, max_depth: int = 16) -> Message:
    """Walk a message that must fill `buffer` exactly (a frame's payload)."""
    message = resume(walk(buffer, None, compact, spec_of, max_depth))
    if message is None:
        raise MalformedMessage("message ends early")
    if message.end != len(buffer):
        raise MalformedMessage(f"{len(buffer) - message.end} bytes after the message")
    return message


def call_header(start: bytes | bytearray, codec: Codec, max_message_bytes: int) -> Call | None:
    """The call the message `start` begins, sent in `codec`, says; None until its header is all there."""
    walking = walk(start[FRAME_HEADER.size :] if codec.framed else start, max_message_bytes, codec.compact, _no_spec)
    return walking.call if walking.header() else None


def _no_spec(method: str) -> None:
    return None


def known_calls(specs: dict[str, dict]) -> re.Pattern:
    """What matches, byte for byte, a strict binary call whose arguments are
    all numbers, all present, in declared order: the shape thriftpy2 and
    Apache Thrift write, for any method in `specs` (thrift_specs by name).

    Such a message needs no walk: its every length is fixed by the IDL. One
    regular expression tests it in one C call, cheaper than the
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


def resume(walking: "_Walk") -> Message | None:
    """Continue a walk: its Message once complete, None while more bytes are needed."""
    return walking.resume()


def field_type(spec: tuple) -> tuple[int, object]:
    """A struct field's thrift_spec entry -> its type and, for a container or struct, what it holds."""
    return spec[0], spec[2] if len(spec) == 4 else None


def element_type(held: int | tuple) -> tuple[int, object]:
    """A container's element type as thriftpy2 writes it (a bare type, or a pair) -> type and what it holds."""
    return (held, None) if isinstance(held, int) else held


def check_argument_types(message: Message, spec: dict | None) -> None:
    """Reject an argument of the wrong type, which thriftpy2 would silently drop.

    `spec` is the thrift_spec of the method's arguments; None (a method the
    service lacks) passes, to be answered with UNKNOWN_METHOD.
    """
    for field_id, field_type in message.argument_types.items():
        declared = (spec or {}).get(field_id)
        if declared and _wire_type(declared[0]) != field_type:
            sent, wanted = _type_name(field_type), _type_name(declared[0])
            raise OffContract(
                f"argument {declared[1]!r} of {message.name} is {sent}, but the IDL declares {wanted}",
                Call(message.name, message.seqid, message.one_way),
            )


def _type_name(kind: int) -> str:
    return TYPE_NAMES.get(kind, f"type {kind}")


def _wire_type(declared: int) -> int:
    return STRING if declared == BINARY else declared


class _Walk:
    """A message walked step by step, resumable without generators.

    Every value begun and not yet finished (a struct, a container) is a
    frame on `stack`. A step reads only bytes that are present, or changes
    nothing and returns: a resumed walk carries on from that step. A
    fixed-size value is skipped without reading it, so `position` may run
    ahead of the bytes; the read after it waits for them.
    """

    def __init__(self, buffer: bytes | bytearray, limit: int | None, max_depth: int, spec_of: SpecOf) -> None:
        self.buffer = buffer
        self.position = 0
        self.whole = limit is None  # the buffer is the whole message: running past it is ending early
        self.limit = len(buffer) if limit is None else limit
        self.max_depth = max_depth
        self.spec_of = spec_of
        self.stack: list[list] = []
        self.name: str | None = None
        self.seqid = 0
        self.one_way = False
        self.arguments: dict[int, int] = {}

    def resume(self) -> Message | None:
        if self.name is None and not self.header():
            return None
        if not self.run():
            return None
        return Message(self.name, self.seqid, self.arguments, self.position, self.one_way)

    def header(self) -> bool:
        """Read the message's header and begin its arguments; False until the header is all present."""
        raise NotImplementedError

    def run(self) -> bool:
        """Walk on until the message ends (True) or the bytes present do (False)."""
        raise NotImplementedError

    @property
    def call(self) -> Call:
        """What the header says of the call, once it is read."""
        return Call(self.name, self.seqid, self.one_way)

    def present(self, at: int, count: int) -> bool:
        """Whether `count` bytes at `at` are present; raises if the message may not reach them."""
        end = at + count
        if end > self.limit:
            raise MalformedMessage("message ends early") if self.whole else self.too_long("")
        return end <= len(self.buffer)

    def check_length(self, length: int, at: int) -> None:
        if not 0 <= length <= self.limit - at:
            why = f"declared length {length} but {self.limit - at} bytes remain"
            raise self.too_long(why) if length > 0 else MalformedMessage(why)

    def check_count(self, count: int, smallest: int, at: int) -> None:
        if count < 0 or count * smallest > self.limit - at:
            why = f"container of {count} elements cannot fit in {self.limit - at} bytes"
            raise self.too_long(why) if count > 0 else MalformedMessage(why)

    def too_long(self, why: str) -> MalformedMessage:
        """A message that cannot end within the limit (`why`, if said). Walked up to the server's maximum (an
        unframed message), a call whose header is read is OffContract: its client is told, as a framed one is."""
        if self.whole or self.name is None:  # a frame's contents, or a header that cannot be one: not a size
            return MalformedMessage(why or f"message longer than {self.limit} bytes")
        over = f"a request longer than the server's maximum of {self.limit} bytes (THRIFT_MAX_MESSAGE_BYTES)"
        return TooLong(f"{over}: {why}" if why else over, self.call)

    def deeper(self, depth: int) -> int:
        if depth >= self.max_depth:
            raise MalformedMessage(f"nested deeper than {self.max_depth}")
        return depth + 1

    def text(self, start: int, length: int) -> str:
        return str(self.buffer[start : start + length], "utf-8", "replace")


# A frame's first item says what it walks.
STRUCT_FRAME, ELEMENTS_FRAME, VARINTS_FRAME = 0, 1, 2


class _BinaryWalk(_Walk):
    """The strict binary protocol.

    Frames: [STRUCT_FRAME, depth, the dict that records field types (the
    arguments) or None] and [ELEMENTS_FRAME, element types, values left, depth].
    """

    def header(self) -> bool:
        if not self.present(0, 8):
            return False
        version, name_length = I32_AT(self.buffer, 0)[0], I32_AT(self.buffer, 4)[0]
        if version >= 0 or (version & 0xFFFF0000) != VERSION_1:
            raise MalformedMessage("not a strict binary-protocol message")
        self.check_length(name_length, 8)
        if not self.present(8, name_length + 4):  # the name and the sequence id
            return False
        self.name = self.text(8, name_length)
        self.seqid = I32_AT(self.buffer, 8 + name_length)[0]
        self.one_way = version & 0xFF == ONE_WAY
        self.position = 8 + name_length + 4
        self.stack.append([STRUCT_FRAME, 1, self.arguments])
        return True

    def run(self) -> bool:
        buffer, stack, position = self.buffer, self.stack, self.position
        while stack:
            frame = stack[-1]
            if frame[0] == STRUCT_FRAME:
                if not self.present(position, 1):
                    break
                field_type = buffer[position]
                if field_type == STOP:
                    position += 1
                    stack.pop()
                    continue
                if not self.present(position, 3) or (after := self.value(field_type, position + 3, frame[1])) is None:
                    break
                if frame[2] is not None:
                    frame[2][I16_AT(buffer, position + 1)[0]] = field_type
                position = after
            elif frame[2]:
                types, left, depth, height = frame[1], frame[2], frame[3], len(stack)
                while left and len(stack) == height:  # until an element that is a struct or container begins
                    if (after := self.value(types[-left % len(types)], position, depth)) is None:
                        break
                    position, left = after, left - 1
                frame[2] = left
                if after is None:
                    break
            else:
                stack.pop()
        self.position = position
        return not stack

    def value(self, kind: int, at: int, depth: int) -> int | None:
        """Begin a value of type `kind` at `at`: where it ends, or for a struct or
        container where its header ends (its frame pushed); None until that is present."""
        if kind in FIXED_SIZE:
            return at + FIXED_SIZE[kind]
        if kind == STRING:
            if not self.present(at, 4):
                return None
            length = I32_AT(self.buffer, at)[0]
            self.check_length(length, at + 4)
            return at + 4 + length
        if kind == STRUCT:
            depth = self.deeper(depth)
            if self.present(at, 1) and self.buffer[at] == STOP:
                return at + 1  # an empty struct: no frame to walk
            self.stack.append([STRUCT_FRAME, depth, None])
            return at
        if kind in (MAP, SET, LIST):
            return self.container(kind, at, self.deeper(depth))
        raise MalformedMessage(f"unknown type {kind}")

    def container(self, kind: int, at: int, depth: int) -> int | None:
        header = 6 if kind == MAP else 5
        if not self.present(at, header):
            return None
        types = tuple(self.buffer[at : at + header - 4])
        count = I32_AT(self.buffer, at + header - 4)[0]
        at += header
        if any(t not in SMALLEST for t in types):
            raise MalformedMessage(f"unknown element type in {types}")
        self.check_count(count, sum(SMALLEST[t] for t in types), at)
        if all(t in FIXED_SIZE for t in types):
            return at + count * sum(FIXED_SIZE[t] for t in types)
        if count:
            self.stack.append([ELEMENTS_FRAME, types, count * len(types), depth])
        return at


# Compact values of a fixed size; a bool inside a container is a byte.
COMPACT_FIXED_SIZE = {BOOL: 1, BYTE: 1, DOUBLE: 8}
VARINTS_AT_ONCE = 64


def _varint_runs(bits: int) -> re.Pattern:
    """What matches VARINTS_AT_ONCE well-formed varints of at most `bits` bits, in one C call."""
    most = (bits + 6) // 7
    top = (1 << (bits - 7 * (most - 1))) - 1  # the largest last byte of a varint `most` bytes long
    one = rb"[\x80-\xff]{0,%d}[\x00-\x7f]|[\x80-\xff]{%d}[\x00-%c]" % (most - 2, most - 1, top)
    return re.compile(rb"(?:%s){%d}" % (one, VARINTS_AT_ONCE))


VARINT_RUNS = {bits: _varint_runs(bits) for bits in VARINT_BITS.values()}


class _CompactWalk(_Walk):
    """The compact protocol, checked against the declared types where thriftpy2 reads by them.

    thriftpy2's compact decoder reads a list's or map's elements as the IDL
    declares them, whatever type the message names; so where a field is
    declared, its elements must be of the declared type.

    Frames: [STRUCT_FRAME, depth, declared spec or None, the dict that
    records field types (the arguments) or None, last field id],
    [ELEMENTS_FRAME, (type, declared inner spec) per element, values left,
    depth], and [VARINTS_FRAME, bits, values left] for a container of
    integers, skipped many at a time.
    """

    def header(self) -> bool:
        buffer = self.buffer
        if not self.present(0, 2):
            return False
        if buffer[0] != COMPACT_ID or buffer[1] & 0x1F != COMPACT_VERSION:
            raise MalformedMessage("not a compact-protocol message")
        if (sequence := self.varint(2, 32)) is None or (length := self.varint(sequence[1], 32)) is None:
            return False
        name_length, at = length
        self.check_length(name_length, at)
        if not self.present(at, name_length):
            return False
        self.name = self.text(at, name_length)
        # An i32 written as an unsigned varint (Java's and Go's clients send one of 2**31 or more once their
        # count wraps): kept unsigned, as thriftpy2 reads it and as its compact protocol can write it back
        # (its write_varint never ends on a negative number, growing a list until memory runs out).
        self.seqid = sequence[0]
        self.one_way = buffer[1] >> 5 == ONE_WAY
        self.position = at + name_length
        self.stack.append([STRUCT_FRAME, 1, self.spec_of(self.name), self.arguments, 0])
        return True

    def run(self) -> bool:
        stack, position = self.stack, self.position
        while stack:
            frame = stack[-1]
            if frame[0] == STRUCT_FRAME:
                after = self.field(frame, position)
            elif frame[0] == VARINTS_FRAME:
                after = self.varints(frame, position)
            elif frame[2]:
                after = self.elements(frame, position)
            else:
                stack.pop()
                continue
            if after is None:
                break
            position = after
        self.position = position
        return not stack

    def elements(self, frame: list, at: int) -> int | None:
        """Walk a container's elements until one that is a struct or container begins.

        Where the walked elements end; None if not even one is present.
        """
        elements, left, depth, height = frame[1], frame[2], frame[3], len(self.stack)
        while left and len(self.stack) == height:
            kind, inner = elements[-left % len(elements)]
            if (after := self.value(kind, at, depth, inner)) is None:
                break
            at, left = after, left - 1
        walked, frame[2] = left < frame[2], left
        return at if walked else None

    def field(self, frame: list, at: int) -> int | None:
        """Walk a struct's next field (its frame popped at STOP): where it ends, None until present."""
        if not self.present(at, 1):
            return None
        header = self.buffer[at]
        if header & 0x0F == STOP:
            self.stack.pop()
            return at + 1
        if header >> 4:
            field_id, at = frame[4] + (header >> 4), at + 1
        elif (read := self.varint(at + 1, 16)) is not None:
            zigzag, at = read
            field_id = (zigzag >> 1) ^ -(zigzag & 1)
        else:
            return None
        kind = self.kind(header & 0x0F)
        declared = frame[2].get(field_id) if frame[2] else None
        if declared and _wire_type(declared[0]) == kind and len(declared) == 4:
            inner = declared[2].thrift_spec if kind == STRUCT else declared[2]
        else:
            inner = None  # not declared: thriftpy2 skips it as the message says
        if kind != BOOL and (at := self.value(kind, at, frame[1], inner)) is None:  # a bool's value is in its type
            return None
        frame[4] = field_id
        if frame[3] is not None:
            frame[3][field_id] = kind
        return at

    def varints(self, frame: list, at: int) -> int | None:
        """Skip a container's integers, many at a time while they are present and well-formed."""
        runs, end, start = VARINT_RUNS[frame[1]], min(len(self.buffer), self.limit), at
        while frame[2]:
            if frame[2] >= VARINTS_AT_ONCE and (run := runs.match(self.buffer, at, end)):
                at, frame[2] = run.end(), frame[2] - VARINTS_AT_ONCE
            elif (read := self.varint(at, frame[1])) is not None:
                at, frame[2] = read[1], frame[2] - 1
            else:
                return None if at == start else at  # keep what was skipped
        self.stack.pop()
        return at

    def varint(self, at: int, bits: int) -> tuple[int, int] | None:
        """An unsigned varint of at most `bits` bits at `at`, and where it ends; None until present."""
        if at < self.limit and at < len(self.buffer) and self.buffer[at] < 0x80:
            return self.buffer[at], at + 1  # most are one byte
        most = (bits + 6) // 7
        value = shift = 0
        for offset in range(most):
            if not self.present(at + offset, 1):
                return None
            byte = self.buffer[at + offset]
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                if value >> bits:
                    raise MalformedMessage(f"varint of more than {bits} bits")
                return value, at + offset + 1
        raise MalformedMessage(f"varint longer than {most} bytes")

    def kind(self, compact_type: int) -> int:
        if compact_type not in COMPACT_TYPES:
            raise MalformedMessage(f"unknown compact type {compact_type}")
        return COMPACT_TYPES[compact_type]

    def value(self, kind: int, at: int, depth: int, inner) -> int | None:
        """Begin a value of type `kind` at `at` (`inner`: what the IDL declares inside it, None if unknown):
        where it ends, or for a struct or container where its header ends (its frame pushed); None until present."""
        if kind in COMPACT_FIXED_SIZE:
            return at + COMPACT_FIXED_SIZE[kind]
        if kind in VARINT_BITS:
            read = self.varint(at, VARINT_BITS[kind])
            return None if read is None else read[1]
        if kind == STRING:
            if (read := self.varint(at, 31)) is None:
                return None
            length, at = read
            self.check_length(length, at)
            return at + length
        if kind == STRUCT:
            depth = self.deeper(depth)
            if self.present(at, 1) and self.buffer[at] & 0x0F == STOP:
                return at + 1  # an empty struct: no frame to walk
            self.stack.append([STRUCT_FRAME, depth, inner, None, 0])
            return at
        return self.container(kind, at, self.deeper(depth), inner)

    def container(self, kind: int, at: int, depth: int, inner) -> int | None:
        header = self.container_header(kind, at)
        if header is None:
            return None
        kinds, count, at = header
        self.check_count(count, len(kinds), at)  # every compact value takes at least a byte
        if not count:
            return at
        inners = [self.declared(kind, inner, element, which) for which, element in enumerate(kinds)]
        if all(element in COMPACT_FIXED_SIZE for element in kinds):
            return at + count * sum(COMPACT_FIXED_SIZE[element] for element in kinds)
        if len(set(kinds)) == 1 and kinds[0] in VARINT_BITS:
            self.stack.append([VARINTS_FRAME, VARINT_BITS[kinds[0]], count * len(kinds)])
        else:
            self.stack.append([ELEMENTS_FRAME, list(zip(kinds, inners, strict=True)), count * len(kinds), depth])
        return at

    def container_header(self, kind: int, at: int) -> tuple[list[int], int, int] | None:
        """A container's element types (key and value for a map), its count, and where its elements start."""
        buffer = self.buffer
        if kind == MAP:
            if (read := self.varint(at, 31)) is None:
                return None
            count, at = read
            if not count:
                return [], 0, at
            if not self.present(at, 1):
                return None
            return [self.kind(buffer[at] >> 4), self.kind(buffer[at] & 0x0F)], count, at + 1
        if not self.present(at, 1):
            return None
        count, element = buffer[at] >> 4, self.kind(buffer[at] & 0x0F)
        if count == 15:
            if (read := self.varint(at + 1, 31)) is None:
                return None
            return [element], *read
        return [element], count, at + 1

    def declared(self, kind: int, inner, element: int, which: int):
        """What the IDL declares inside an element of this container, checked against `element`."""
        if inner is None:
            return None
        spec = inner[which] if kind == MAP else inner
        declared_type, element_inner = (spec, None) if isinstance(spec, int) else spec
        if _wire_type(declared_type) != element:
            sent, wanted = _type_name(element), _type_name(declared_type)
            raise OffContract(f"a container element of {self.name} is {sent}, but the IDL declares {wanted}", self.call)
        return element_inner.thrift_spec if element == STRUCT else element_inner
