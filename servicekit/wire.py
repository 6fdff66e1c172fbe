"""Wire checks: an incoming Thrift binary-protocol message, before thriftpy2 decodes it.

thriftpy2 allocates whatever length a message declares: a 20-byte message
declaring a 1 GiB string makes it reserve and copy 1 GiB, and a list declaring
two billion elements keeps a worker reading past the end of the buffer. The
server's workers call `check_message()` on each frame first: every declared
string length and container size must fit in the bytes that remain, and
nesting is limited. A message that passes decodes within its frame's size.
"""

import struct

STOP, BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST = 0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15
FIXED_SIZE = {BOOL: 1, BYTE: 1, DOUBLE: 8, I16: 2, I32: 4, I64: 8}
# The fewest bytes a value of each type can take: what a container's element
# count is multiplied by before any element is read.
SMALLEST = {**FIXED_SIZE, STRING: 4, STRUCT: 1, MAP: 5, SET: 5, LIST: 5}
VERSION_1 = 0x80010000
I32_AT = struct.Struct("!i").unpack_from
I16_AT = struct.Struct("!h").unpack_from


class MalformedMessage(ValueError):
    """The bytes are not a well-formed message within the limits."""


def check_message(frame: bytes, max_depth: int = 16) -> tuple[str, dict[int, int]]:
    """Raise MalformedMessage unless `frame` is one strict binary-protocol message.

    Returns the method name and the type of each top-level argument by field id.
    """
    reader = _Reader(frame, max_depth)
    version = reader.i32()
    if version >= 0 or (version & 0xFFFF0000) != VERSION_1:
        raise MalformedMessage("not a strict binary-protocol message")
    name_length = _checked_length(reader.i32(), reader)
    reader.skip(name_length)
    name = frame[reader.position - name_length : reader.position].decode("utf-8", "replace")
    reader.i32()  # sequence id
    arguments: dict[int, int] = {}
    while (field_type := reader.byte()) != STOP:
        reader.skip(2)
        arguments[I16_AT(frame, reader.position - 2)[0]] = field_type
        reader.value(field_type, 1)
    if reader.position != len(frame):
        raise MalformedMessage(f"{len(frame) - reader.position} bytes after the message")
    return name, arguments


def _checked_length(length: int, reader: "_Reader") -> int:
    if not 0 <= length <= reader.remaining():
        raise MalformedMessage(f"declared length {length} but {reader.remaining()} bytes remain")
    return length


class _Reader:
    def __init__(self, frame: bytes, max_depth: int) -> None:
        self.frame = frame
        self.position = 0
        self.max_depth = max_depth

    def remaining(self) -> int:
        return len(self.frame) - self.position

    def skip(self, count: int) -> None:
        if count > self.remaining():
            raise MalformedMessage("message ends early")
        self.position += count

    def byte(self) -> int:
        self.skip(1)
        return self.frame[self.position - 1]

    def i32(self) -> int:
        self.skip(4)
        return I32_AT(self.frame, self.position - 4)[0]

    def value(self, kind: int, depth: int) -> None:
        if kind in FIXED_SIZE:
            self.skip(FIXED_SIZE[kind])
        elif kind == STRING:
            self.skip(_checked_length(self.i32(), self))
        elif kind in (STRUCT, MAP, SET, LIST):
            if depth >= self.max_depth:
                raise MalformedMessage(f"nested deeper than {self.max_depth}")
            self._container(kind, depth + 1)
        else:
            raise MalformedMessage(f"unknown type {kind}")

    def _container(self, kind: int, depth: int) -> None:
        if kind == STRUCT:
            while (field_type := self.byte()) != STOP:
                self.skip(2)  # field id
                self.value(field_type, depth)
            return
        types = (self.byte(), self.byte()) if kind == MAP else (self.byte(),)
        count = self.i32()
        if any(t not in SMALLEST for t in types):
            raise MalformedMessage(f"unknown element type in {types}")
        if count < 0 or count * sum(SMALLEST[t] for t in types) > self.remaining():
            raise MalformedMessage(f"container of {count} elements cannot fit in {self.remaining()} bytes")
        if all(t in FIXED_SIZE for t in types):
            self.skip(count * sum(FIXED_SIZE[t] for t in types))
            return
        for _ in range(count):
            for element_type in types:
                self.value(element_type, depth)


def check_argument_types(method: str, argument_types: dict[int, int], spec: dict | None) -> None:
    """Reject an argument of the wrong type, which thriftpy2 would silently drop.

    `spec` is the thrift_spec of the method's arguments; None (a method the
    service lacks) passes, to be answered with UNKNOWN_METHOD.
    """
    for field_id, field_type in argument_types.items():
        declared = (spec or {}).get(field_id)
        if declared and declared[0] != field_type:
            raise MalformedMessage(f"argument {declared[1]!r} of {method} has type {field_type}, not {declared[0]}")
