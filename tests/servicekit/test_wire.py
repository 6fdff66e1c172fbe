"""The wire checks on their own: detection, what passes, and each way a message is refused before decoding."""

import struct
import zlib
from pathlib import Path

import pytest
import thriftpy2
from thriftpy2.thrift import TType

from counters import counters_thrift
from helpers.wire import call_bytes, framed, message_header, varint
from servicekit.wire import (
    Codec,
    MalformedMessage,
    Message,
    OffContract,
    check_argument_types,
    detect,
    known_calls,
    resume,
    walk,
    walk_whole,
)

Counters = counters_thrift.Counters
containers_thrift = thriftpy2.load(str(Path(__file__).with_name("containers.thrift")), module_name="containers_thrift")
Containers = containers_thrift.Containers


def spec_of(method: str) -> dict | None:
    arguments = getattr(Counters, method + "_args", None)
    return arguments.thrift_spec if arguments else None


@pytest.mark.parametrize(
    ("start", "codec"),
    [
        (call_bytes(Counters, "ping"), Codec(framed=False, compact=False)),
        (call_bytes(Counters, "ping", compact=True), Codec(framed=False, compact=True)),
        (framed(call_bytes(Counters, "ping")), Codec(framed=True, compact=False)),
        (framed(call_bytes(Counters, "ping", compact=True)), Codec(framed=True, compact=True)),
        (b"\x00\x00", None),  # too few bytes to tell
    ],
)
def test_a_connection_is_known_by_its_first_bytes(start, codec):
    assert detect(start, 65536) == codec


@pytest.mark.parametrize(
    ("start", "refusal"),
    [
        (b"GET / HTTP/1.1\r\n", "an HTTP request, to a port that serves Thrift"),
        (b"\x16\x03\x01\x02\x00\x01", "a TLS handshake, to a port that serves plain TCP"),
        (b'[1,"ping",1,0,{}]', "Thrift's JSON protocol, which this server does not speak"),
        (b'\x00\x00\x00\x11[1,"ping",1,0,{}]', "Thrift's JSON protocol, which this server does not speak"),  # framed
        (zlib.compress(call_bytes(Counters, "ping")), "a zlib stream \\(Thrift's TZlibTransport\\)"),
        (b"*1\r\n$4\r\nPING\r\n", "text \\(b'\\*1\\\\r\\\\n\\$4\\\\r\\\\nPING\\\\r\\\\n'\\), not a Thrift message"),
        (b"\x13\x37\x13\x37", "frame of 322376503 bytes"),  # garbage
        (b"\x00\x00\x00\x04ping", "neither a framed nor an unframed strict binary or compact Thrift"),  # non-strict
        (b"\x00\x00\x00\x20\x0f\xff\x00\x00", "Thrift's header transport, which this server does not speak"),
    ],
)
def test_anything_else_is_refused_from_its_first_bytes(start, refusal):
    with pytest.raises(MalformedMessage, match=refusal):
        detect(start, 65536)


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
def test_a_well_formed_call_passes_with_its_name_and_argument_types(compact):
    message = walk_whole(call_bytes(Counters, "add", "x", 5, "req-1", compact=compact), compact, spec_of)
    assert (message.name, message.argument_types) == ("add", {1: TType.STRING, 2: TType.I64, 3: TType.STRING})
    check_argument_types(message, Counters.add_args.thrift_spec)


KNOWN_CALLS = known_calls({method: spec_of(method) for method in Counters.thrift_services})
HOLD_SECONDS = b"\x04\x00\x01" + struct.pack("!d", 0.5)


@pytest.mark.parametrize(
    "message",
    [call_bytes(Counters, "ping"), call_bytes(Counters, "hold", 0.5)],
    ids=["no arguments", "a number"],
)
def test_a_call_with_numbers_only_as_a_stock_client_writes_it_needs_no_walk(message):
    # What the pattern accepts, the full walk must accept too, and end at the same byte.
    known = KNOWN_CALLS.match(message + b"next")
    assert known and known.end() == walk_whole(message, False, spec_of).end == len(message)


@pytest.mark.parametrize(
    "message",
    [
        call_bytes(Counters, "get", "x"),  # a string argument
        message_header(b"hold") + b"\x00",  # the argument missing
        message_header(b"hold") + b"\x0a\x00\x01" + struct.pack("!q", 1) + b"\x00",  # of another type
        message_header(b"hold") + HOLD_SECONDS + b"\x08\x00\x02\x00\x00\x00\x01\x00",  # one the IDL lacks
        message_header(b"hold") + HOLD_SECONDS,  # no STOP: not all here yet
        message_header(b"nope") + b"\x00",  # a method the service lacks
    ],
    ids=["string", "missing", "other type", "unknown field", "incomplete", "unknown method"],
)
def test_every_other_call_takes_the_full_walk(message):
    assert KNOWN_CALLS.match(message) is None


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
def test_an_unframed_message_is_complete_only_once_its_last_byte_is_in(compact):
    whole = call_bytes(Counters, "add", "x" * 40, 5, "req-1", compact=compact) + b"next"
    received = bytearray()
    walking = walk(received, 65536, compact, spec_of)
    for byte in whole[: -len(b"next") - 1]:
        received.append(byte)
        assert resume(walking) is None
    received += whole[-len(b"next") - 1 :]
    assert resume(walking).end == len(whole) - len(b"next")


def containers_spec_of(method: str) -> dict | None:
    return Containers.take_args.thrift_spec if method == "take" else None


def every_container(compact: bool) -> bytes:
    """A call holding each container shape, with integers of every varint length and sign."""
    numbers = [(-1) ** n * 7**n for n in range(23)] * 9  # 207: several runs of integers and a remainder
    return call_bytes(
        Containers,
        "take",
        numbers,
        [[], [1, -2, 300], [-(2**15), 2**15 - 1]],
        ["", "x", "y" * 200],
        {1: 2**62, -1: -(2**63)},
        [True, False, True],
        {0.5, -2.0},
        [containers_thrift.Point(1, 2), containers_thrift.Point()],
        compact=compact,
    )


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
@pytest.mark.parametrize("declared", [True, False], ids=["declared", "skipped"])
def test_every_container_shape_is_walked_to_its_end_and_resumed_at_any_byte(compact, declared):
    whole = every_container(compact)
    lookup = containers_spec_of if declared else spec_of  # Counters has no `take`: every argument is skipped
    assert walk_whole(whole, compact, lookup).end == len(whole)
    received = bytearray()
    walking = walk(received, 65536, compact, lookup)
    for byte in whole[:-1]:
        received.append(byte)
        assert resume(walking) is None
    received.append(whole[-1])
    assert resume(walking).end == len(whole)


@pytest.mark.parametrize(
    ("element", "refusal"),
    [(b"\xff" * 10 + b"\x01", "varint longer than 10 bytes"), (b"\xff" * 9 + b"\x02", "varint of more than 64 bits")],
)
def test_a_bad_integer_among_many_is_refused(element, refusal):
    numbers = b"\x02" * 100 + element + b"\x02" * 100  # the bad one inside a run of 64
    message = message_header(b"take", True) + b"\x19\xf6" + varint(201) + numbers + b"\x00"
    with pytest.raises(MalformedMessage, match=refusal):
        walk_whole(message, True, containers_spec_of)


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        (b"\x13\x37" * 4, "not a strict binary-protocol message"),
        (call_bytes(Counters, "get", "x")[:-3], "message ends early"),
        (message_header(b"add") + b"\x0b\x00\x01" + struct.pack("!i", 2**30) + b"\x00", "declared length 1073741824"),
        (message_header(b"add") + b"\x0b\x00\x01\xff\xff\xff\xfe\x00", "declared length -2"),
        (message_header(b"ping") + b"\x0f\x00\x09\x02" + struct.pack("!i", 2**31 - 1) + b"\x00", "cannot fit"),
        (message_header(b"ping") + b"\x0c\x00\x09" * 20 + b"\x00" * 21, "nested deeper than 16"),
        (message_header(b"ping") + b"\x63\x00\x01\x00", "unknown type 99"),
        (call_bytes(Counters, "ping") + b"extra", "5 bytes after the message"),
    ],
)
def test_a_malformed_binary_message_is_refused_with_the_reason(message, refusal):
    with pytest.raises(MalformedMessage, match=refusal):
        walk_whole(message, False, spec_of)


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        (b"\x82\x02\x01\x00\x00", "not a compact-protocol message"),  # version 2
        (call_bytes(Counters, "get", "x", compact=True)[:-1], "message ends early"),
        (message_header(b"add", True) + b"\x18" + varint(2**30) + b"\x00", "declared length 1073741824"),
        (message_header(b"add", True) + b"\x18" + varint(2**32 - 2) + b"\x00", "varint of more than 31 bits"),
        (message_header(b"ping", True) + b"\x99\xf5" + varint(2**31 - 1) + b"\x00", "cannot fit"),
        (message_header(b"ping", True) + b"\x9c" + b"\x1c" * 20 + b"\x00" * 21, "nested deeper than 16"),
        (message_header(b"ping", True) + b"\x9d\x00", "unknown compact type 13"),
        (message_header(b"get", True) + b"\x16" + b"\xff" * 11 + b"\x00", "varint longer than 10 bytes"),
        (message_header(b"list_counters", True) + b"\x19\x15\x02\x00", "argument 'limit' of list_counters"),
        (call_bytes(Counters, "ping", compact=True) + b"extra", "5 bytes after the message"),
    ],
)
def test_a_malformed_compact_message_is_refused_with_the_reason(message, refusal):
    with pytest.raises(MalformedMessage, match=refusal):
        message = walk_whole(message, True, spec_of)
        check_argument_types(message, spec_of(message.name))


def test_compact_elements_must_be_of_the_declared_type_which_thriftpy2_reads_them_as():
    def declares_a_list_of_i32(method: str) -> dict:
        return {1: (TType.LIST, "ids", TType.I32, False)}

    strings = message_header(b"sum", True) + b"\x19\x28" + b"\x01a\x01b" + b"\x00"
    with pytest.raises(OffContract, match="a container element of sum is string, but the IDL declares i32"):
        walk_whole(strings, True, declares_a_list_of_i32)
    integers = message_header(b"sum", True) + b"\x19\x25\x02\x04\x00"
    assert walk_whole(integers, True, declares_a_list_of_i32).argument_types == {1: TType.LIST}


@pytest.mark.parametrize(
    "endless",
    [b"\x08\x00\x09\x00\x00\x00\x01" * 200, b"\x0b\x00\x01\x00\x01\x00\x00"],
    ids=["many fields", "a string of 64 kB declared"],
)
def test_an_unframed_call_may_not_grow_past_the_maximum_and_is_answered(endless):
    with pytest.raises(OffContract, match="a request longer than the server's maximum of 1024 bytes") as error:
        resume(walk(bytearray(message_header(b"ping") + endless), 1024, False, spec_of))
    assert error.value.call == ("ping", 1, False)  # what the error reply answers


def test_an_argument_of_the_wrong_type_is_refused_with_the_types_named():
    with pytest.raises(OffContract, match="argument 'name' of get is i64, but the IDL declares string") as error:
        check_argument_types(Message("get", 7, {1: TType.I64}, 20), Counters.get_args.thrift_spec)
    assert error.value.call == ("get", 7, False)  # what the error reply answers


def test_an_unknown_method_passes_to_be_answered_unknown_method():
    check_argument_types(Message("steal_money", 1, {1: TType.I64}, 20), None)
