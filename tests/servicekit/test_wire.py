"""The wire checks on their own: what passes, and each way a message is refused before decoding."""

import struct

import pytest
from thriftpy2.thrift import TType

from counters import counters_thrift
from helpers.wire import call_bytes, message_header
from servicekit.wire import MalformedMessage, check_argument_types, check_message

Counters = counters_thrift.Counters


def test_a_well_formed_call_passes_with_its_name_and_argument_types():
    name, types = check_message(call_bytes(Counters, "add", "x", 5, "req-1"))
    assert (name, types) == ("add", {1: TType.STRING, 2: TType.I64, 3: TType.STRING})
    check_argument_types("add", types, Counters.add_args.thrift_spec)


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
def test_a_malformed_message_is_refused_with_the_reason(message, refusal):
    with pytest.raises(MalformedMessage, match=refusal):
        check_message(message)


def test_an_argument_of_the_wrong_type_is_refused():
    with pytest.raises(MalformedMessage, match="argument 'name' of get has type 10, not 11"):
        check_argument_types("get", {1: TType.I64}, Counters.get_args.thrift_spec)


def test_an_unknown_method_passes_to_be_answered_unknown_method():
    check_argument_types("steal_money", {1: TType.I64}, None)
