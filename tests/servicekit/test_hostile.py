"""Hostile input, fuzzing, stalled senders and connection limits against a real server."""

import os
import resource
import socket
import struct
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TCyMemoryBuffer

from counters import counters_thrift
from counters_testing import SCRIPT, counters_process
from helpers.load import connections_to
from helpers.processes import rss_kb
from helpers.wire import (
    CODECS,
    application_error,
    call_bytes,
    exchange,
    framed,
    message_header,
    on_the_wire,
    unread_bytes,
    varint,
)
from servicekit.wire import EMPTY_FRAME, Codec
from tools.throwaway_db import wait_for

Counters = counters_thrift.Counters
# Not Thrift at all: refused from a connection's first bytes.
NOT_THRIFT = {
    "garbage bytes": b"\x13\x37" * 50,
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: service\r\n\r\n",
    "a TLS hello to the plain port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "an old non-strict binary message": struct.pack("!i", 4) + b"ping" + b"\x01" + struct.pack("!i", 1) + b"\x00",
    "a negative frame length": struct.pack("!i", -5) + b"12345",
    "a huge frame length": struct.pack("!i", 2**31 - 1),
}


# Well-formed calls the IDL does not allow, and the message of the PROTOCOL_ERROR reply each gets.
OFF_CONTRACT = {
    "a wrong argument type": "argument 'name' of get is i64, but the IDL declares string",
    "a string argument that is not UTF-8": "argument 'cursor' of list_counters holds a string that is not UTF-8",
}
# Unframed, these declare more than THRIFT_MAX_MESSAGE_BYTES after a whole call header: the call is answered
# with a PROTOCOL_ERROR saying so, as a framed call too long is.
TOO_LONG_UNFRAMED = {
    "a 1 GiB string",
    "a list of 2 billion",
    "5 million empty structs",
    "a message past the maximum size",
}
TOO_LONG = "a request longer than the server's maximum of 65536 bytes (THRIFT_MAX_MESSAGE_BYTES)"


def hostile_messages(compact: bool) -> dict[str, bytes]:
    """Malformed messages in one protocol, each refused before thriftpy2 decodes it."""

    def header(name: bytes) -> bytes:
        return message_header(name, compact)

    if compact:  # field headers: the high nibble is the field id's delta, the low one the type
        shapes = {
            "a 1 GiB string": header(b"add") + b"\x18" + varint(2**30) + b"\x00",
            "a list of 2 billion": header(b"ping") + b"\x99\xf5" + varint(2**31 - 1) + b"\x00",
            "5 million empty structs": header(b"ping") + b"\x99\xfc" + varint(5_000_000) + b"\x00" * 1000,
            "deep nesting": header(b"ping") + b"\x9c" + b"\x1c" * 99 + b"\x00" * 101,
            "a wrong argument type": header(b"get") + b"\x16\x02\x00",
            "a negative string length": header(b"add") + b"\x18" + varint(2**32 - 2) + b"\x00",
        }
    else:
        shapes = {
            "a 1 GiB string": header(b"add") + b"\x0b\x00\x01" + struct.pack("!i", 2**30) + b"\x00",
            "a list of 2 billion": header(b"ping") + b"\x0f\x00\x09\x02" + struct.pack("!i", 2**31 - 1) + b"\x00",
            "5 million empty structs": header(b"ping")
            + b"\x0f\x00\x09\x0c"
            + struct.pack("!i", 5_000_000)
            + b"\x00" * 1000,
            "deep nesting": header(b"ping") + b"\x0c\x00\x09" * 100 + b"\x00" * 101,
            "a wrong argument type": header(b"get") + b"\x0a\x00\x01" + b"\x00" * 8 + b"\x00",
            "a negative string length": header(b"add") + b"\x0b\x00\x01\xff\xff\xff\xfe\x00",
        }
    return shapes


def hostile_input(codec: Codec) -> dict[str, bytes]:
    """What a hostile client speaking `codec` sends, by name."""
    cases = {name: on_the_wire(message, codec) for name, message in hostile_messages(codec.compact).items()}
    # A server gets calls (a one-way call is dropped, test_stock_clients.py): a reply is no message to it.
    cases["a message that is not a call"] = on_the_wire(
        message_header(b"ping", codec.compact, TMessageType.REPLY) + b"\x00", codec
    )
    # Well formed, but thriftpy2 would hand the handler bytes for the string.
    not_utf8 = call_bytes(Counters, "list_counters", 2, b"\xff\xfe", compact=codec.compact)
    cases["a string argument that is not UTF-8"] = on_the_wire(not_utf8, codec)
    if codec.framed:  # a frame's length says where its message ends, so these are refused too
        cases["a truncated message"] = framed(call_bytes(Counters, "get", "truncated", compact=codec.compact)[:-3])
        cases["bytes after the message"] = framed(call_bytes(Counters, "ping", compact=codec.compact) + b"extra")
    else:  # a struct that never ends: past THRIFT_MAX_MESSAGE_BYTES (64 KiB) without a whole message
        i32_field = b"\x15\x02" if codec.compact else b"\x08\x00\x01\x00\x00\x00\x02"
        cases["a message past the maximum size"] = message_header(b"ping", codec.compact) + i32_field * 40_000
    return cases


HOSTILE = [(None, name) for name in NOT_THRIFT] + [(codec, name) for codec in CODECS for name in hostile_input(codec)]


@pytest.mark.parametrize(
    ("codec", "name"), HOSTILE, ids=[f"{codec or 'not Thrift'}: {name}" for codec, name in HOSTILE]
)
def test_hostile_input_closes_only_that_connection_with_one_warning(server, client, codec, name):
    log_start = len(server.log())
    reply, peer = exchange(server.port, NOT_THRIFT[name] if codec is None else hostile_input(codec)[name])
    # Closed, nothing allocated; a TLS client is told the handshake failed (test_tls.py), and a well-formed
    # call the IDL does not allow is told why; anything else is answered with nothing.
    if name == "a TLS hello to the plain port":
        assert reply == b"\x15\x03\x03\x00\x02\x02\x28"
    elif name in OFF_CONTRACT:
        assert application_error(reply, codec).message == OFF_CONTRACT[name]
    elif name in TOO_LONG_UNFRAMED and not codec.framed:
        assert application_error(reply, codec).message.startswith(TOO_LONG)
    else:
        assert reply == b""

    def lines_about_peer() -> list[str]:
        return [line for line in server.log().splitlines() if f"{peer}:" in line or line.endswith(peer)]

    wait_for(lines_about_peer, 5, "the warning")
    assert len(lines_about_peer()) == 1 and " WARNING " in lines_about_peer()[0]
    assert "Traceback" not in server.log()[log_start:]
    assert client.ping() == "pong"


def test_an_oversized_frame_is_refused_before_its_bytes_are_read(server, client):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as hostile:
        hostile.sendall(struct.pack("!i", 2**31 - 1) + b"x" * 100)
        assert hostile.recv(1) == b""  # closed without reading the body
    assert client.ping() == "pong"
    assert "frame of 2147483647 bytes" in server.log()


def test_an_unknown_method_gets_an_error_reply_and_a_warning(server, client):
    reply, _ = exchange(server.port, framed(message_header(b"steal_money") + b"\x00"))
    protocol = TCyBinaryProtocol(TCyMemoryBuffer(reply[4:]))
    name, kind, _ = protocol.read_message_begin()
    assert (name, kind) == ("steal_money", TMessageType.EXCEPTION)
    assert "unknown method 'steal_money'" in server.log()
    assert client.ping() == "pong"


def test_an_unknown_method_of_60_kb_is_answered_with_its_first_255_characters(server, client):
    reply, _ = exchange(server.port, framed(message_header(b"A" * 60_000) + b"\x00"))
    name, kind, _ = TCyBinaryProtocol(TCyMemoryBuffer(reply[4:])).read_message_begin()
    assert (name, kind) == ("A" * 255, TMessageType.EXCEPTION) and len(reply) < 700  # its message names it too
    assert client.ping() == "pong"


def mutations(compact: bool) -> st.SearchStrategy[bytes]:
    valid = [
        call_bytes(Counters, "get", "fuzzed", compact=compact),
        call_bytes(Counters, "add", "x" * 30, 5, "req-1", compact=compact),
        call_bytes(Counters, "ping", compact=compact),
    ]

    def mutate(data: tuple) -> bytes:
        message, position, replacement, cut = data
        position %= len(message)
        return (message[:position] + replacement + message[position + len(replacement) :])[: cut or None]

    return st.one_of(
        st.binary(max_size=300),
        st.tuples(
            st.sampled_from(valid), st.integers(0, 300), st.binary(min_size=1, max_size=8), st.integers(0, 300)
        ).map(mutate),
    )


@pytest.mark.parametrize("codec", CODECS, ids=str)
def test_fuzzed_messages_never_hurt_the_server(start_server, codec):
    server = start_server(LOG_LEVEL="ERROR")
    before = rss_kb(server.process.pid)
    sent = []

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(payload=mutations(codec.compact))
    def send(payload: bytes) -> None:
        exchange(server.port, on_the_wire(payload, codec))
        sent.append(payload)

    send()
    assert len(sent) >= settings.default.max_examples
    with server.client() as client:
        assert client.ping() == "pong"
    assert rss_kb(server.process.pid) - before < 50 * 1024
    assert server.stop() == 0


def test_stalled_senders_are_closed_after_the_read_timeout_and_do_not_block_others(start_server):
    server = start_server(THRIFT_READ_TIMEOUT="1", THRIFT_WORKERS="2")
    stalled = []
    try:
        for n in range(1000):
            codec = CODECS[n % len(CODECS)]
            sock = socket.create_connection(("127.0.0.1", server.port))
            message = on_the_wire(call_bytes(Counters, "ping", compact=codec.compact), codec)
            sock.sendall(message[:7])  # part of a message, then silence
            stalled.append(sock)
        with server.client(timeout=2, retries=0) as client:
            client.add("not blocked", 1)
            for _ in range(50):
                client.get("not blocked")
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(1) == b""  # the server closed it
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("codec", CODECS, ids=str)
def test_a_message_trickled_byte_by_byte_is_closed_at_the_read_timeout(start_server, codec):
    """Each byte comes well within the timeout; the whole message never does (a slowloris)."""
    server = start_server(THRIFT_READ_TIMEOUT="1")
    message = on_the_wire(call_bytes(Counters, "add", "x" * 60, 1, "trickled"), codec)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(0.25)  # a byte every 0.25 s, unless the server closes the connection
        for byte in message[:-1]:
            try:
                sock.sendall(bytes([byte]))
                assert sock.recv(1) == b""  # no reply comes to part of a message: only the close
                break
            except TimeoutError:
                continue
            except ConnectionError:  # the close, seen while sending
                break
        else:
            pytest.fail(f"still open after {len(message) - 1} bytes, one every 0.25 s")
    wait_for(lambda: "no complete message within 1s" in server.log(), 5, "the log line")


def test_unfinished_requests_past_the_buffered_bytes_budget_close_the_connections_that_add_them(start_server):
    """Many clients each sending most of a large message and waiting: memory stays within the budget."""
    server = start_server(THRIFT_MAX_BUFFERED_BYTES=str(2**20))
    senders = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    try:
        for sock in senders:
            start = message_header(b"add")  # a call's start, then 50,000 of its 60,000 bytes
            sock.sendall(struct.pack(">i", 60_000) + start + b"\x00" * (50_000 - len(start)))
        # 20 such connections hold 1,000,080 bytes: each one after them takes the server over 2**20.
        wait_for(lambda: connections_to(server.port, "127.0.0.1") == 20, 10, "20 connections left open")
        with server.client(retries=0) as client:
            assert client.ping() == "pong"
    finally:
        for sock in senders:
            sock.close()
    assert "bytes of unfinished requests take the server's over 1048576" in server.log()


def test_connections_beyond_the_maximum_are_closed_at_once_with_one_log_line(start_server):
    server = start_server(THRIFT_MAX_CONNECTIONS="20")
    kept = [server.client(pool_size=1) for _ in range(20)]
    try:
        for client in kept:
            assert client.ping() == "pong"
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as refused:
                assert refused.recv(1) == b""
        assert all(client.ping() == "pong" for client in kept)
        refusal = "refused 50 connections: 20 open is the maximum (THRIFT_MAX_CONNECTIONS)"  # and what to raise
        wait_for(lambda: refusal in server.log(), 5, "the refusal warning")
        assert server.log().count("refused") == 1
    finally:
        for client in kept:
            client.close()


def test_clients_that_stop_reading_hold_no_worker_and_are_closed_after_the_read_timeout(start_server):
    server = start_server(THRIFT_WORKERS="2", THRIFT_READ_TIMEOUT="2")
    before = rss_kb(server.process.pid)
    request = framed(call_bytes(Counters, "repeat", "x" * 100, 1000))  # a 100 kB reply
    stalled = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(2 + 4)]
    try:
        for sock in stalled:
            sock.sendall(request * 200)  # and never read a byte
        # Replies fill each socket's buffers, then the server must keep the rest.
        wait_for(lambda: all(unread_bytes(sock) > 50_000 for sock in stalled), 10, "replies to pile up")
        with server.client(timeout=1, retries=0) as other:
            for _ in range(10):
                assert other.ping() == "pong"
                assert other.call("repeat", "y", 3) == "yyy"
        wait_for(lambda: connections_to(server.port) == 0, 15, "the server to close the stalled connections")
        assert server.log().count("took no reply bytes for 2s") == len(stalled)
        assert rss_kb(server.process.pid) - before < 50 * 1024
    finally:
        for sock in stalled:
            sock.close()


def test_out_of_file_descriptors_the_server_pauses_accepting_and_warns_once(database, tmp_path):
    # Started with 64 descriptors of a hard limit of 128: it raises its own to 128 and lowers its connection limit.
    limited = (
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 128)); os.execv(sys.argv[1], sys.argv[1:])"
    )
    command = [sys.executable, "-c", limited, sys.executable, "-W", "error", SCRIPT]
    server = counters_process(database, tmp_path / "server.log", command=command)
    flood = []
    try:
        assert (
            "Max open files            128                  128"
            in Path(f"/proc/{server.process.pid}/limits").read_text()
        )
        assert (
            "THRIFT_MAX_CONNECTIONS=10000 is more than 128 open files allow: at most 60 connections per process;"
            " raise the open-file limit (ulimit -n) for more"
        ) in server.log()
        resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (40, 128))  # now fewer than it allows for
        for _ in range(300):
            flood.append(socket.create_connection(("127.0.0.1", server.port)))
        wait_for(lambda: "cannot accept connections (Too many open files)" in server.log(), 10, "the warning")
        cpu_before, started = cpu_seconds(server.process.pid), time.monotonic()
        time.sleep(2)  # a window to see that the server does not retry accept() at once, again and again
        assert cpu_seconds(server.process.pid) - cpu_before < 0.5 * (time.monotonic() - started)
        assert server.log().count("cannot accept connections") == 1
        for sock in flood:
            sock.close()
        with server.client(timeout=5) as client:
            assert client.ping() == "pong"
    finally:
        for sock in flood:
            sock.close()
        server.stop()


# Runs the server with an epoll whose next register() fails as the kernel's does
# past sysctl fs.epoll.max_user_watches, once the file named by argv[1] exists.
EPOLL_OUT_OF_WATCHES = """
import errno, os, runpy, select, sys
trigger, script = sys.argv[1:]
kernel_epoll = select.epoll

class Epoll:
    def __init__(self):
        self._epoll = kernel_epoll()

    def register(self, fd, events):
        if os.path.exists(trigger):
            os.remove(trigger)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._epoll.register(fd, events)

    def __getattr__(self, name):
        return getattr(self._epoll, name)

select.epoll = Epoll
sys.argv, sys.path[0] = [script], os.path.dirname(script)
runpy.run_path(script, run_name="__main__")
"""


def test_a_connection_epoll_cannot_watch_is_closed_and_accepting_resumes(database, tmp_path):
    trigger = tmp_path / "fail-next-register"
    command = [sys.executable, "-W", "error", "-c", EPOLL_OUT_OF_WATCHES, str(trigger), SCRIPT]
    # One worker: it never stays on a connection, so every register() is of a new one.
    server = counters_process({**database, "THRIFT_WORKERS": "1"}, tmp_path / "server.log", command=command)
    try:
        with server.client(timeout=5, retries=0) as client:
            assert client.ping() == "pong"
            trigger.touch()
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as unwatched:
                assert unwatched.recv(1) == b""  # closed by the server
            assert not trigger.exists()
            warning = "cannot accept connections (epoll: No space left on device)"
            wait_for(lambda: warning in server.log(), 5, "the warning")
            assert client.ping() == "pong"
        with server.client(timeout=5, retries=0) as later:  # accepted after the next housekeeping round
            assert later.ping() == "pong"
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.parametrize("codec", [codec for codec in CODECS if codec.compact], ids=str)
def test_a_compact_call_off_the_idl_with_a_sequence_id_past_2_31_is_answered_and_the_connection_stays(
    database, tmp_path, codec
):
    # Java's and Go's compact clients write their i32 sequence id as an unsigned varint: past 2**31 calls it
    # is 5 bytes. Its PROTOCOL_ERROR reply must carry it back, not loop in thriftpy2's write_varint on a
    # negative number until memory runs out (a limit on the server's address space ends such a run fast).
    limited = (
        "import os, resource, sys; "
        "resource.setrlimit(resource.RLIMIT_AS, (1536 << 20, 1536 << 20)); os.execv(sys.argv[1], sys.argv[1:])"
    )
    command = [sys.executable, "-c", limited, sys.executable, "-W", "error", SCRIPT]
    server = counters_process(database, tmp_path / "server.log", command=command)
    try:
        seqid = 2**32 - 1  # -1 as an i32
        wrong_type = bytes([0x82, 0x21]) + varint(seqid) + varint(3) + b"get" + b"\x16\x02\x00"  # get(1: i64)
        ping = call_bytes(Counters, "ping", compact=True)
        reply, _ = exchange(server.port, on_the_wire(wrong_type, codec) + on_the_wire(ping, codec))
        assert application_error(reply, codec).message == "argument 'name' of get is i64, but the IDL declares string"
        exception_header = bytes([0x82, 0x61]) + varint(seqid)  # an exception, under the sequence id as sent
        assert reply[4 if codec.framed else 0 :].startswith(exception_header)
        assert b"pong" in reply  # and the next call on the connection is answered
        assert "MemoryError" not in server.log() and "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("codec", [codec for codec in CODECS if codec.framed], ids=str)
def test_empty_frames_before_the_first_call_are_skipped_as_between_calls(server, codec):
    # Apache's TFramedTransport sends an empty frame when flushed with nothing written, which code may do before
    # its first call as well as between calls; Apache's servers skip it wherever it comes.
    ping = on_the_wire(call_bytes(Counters, "ping", compact=codec.compact), codec)
    reply, _ = exchange(server.port, EMPTY_FRAME + ping + EMPTY_FRAME * 3 + ping)
    assert reply.count(b"pong") == 2


@pytest.mark.parametrize("codec", [codec for codec in CODECS if codec.framed], ids=str)
def test_a_call_over_the_maximum_whose_length_arrives_alone_is_still_told_why(server, codec):
    # However the network splits it: a frame length over THRIFT_MAX_MESSAGE_BYTES read before its call's header
    # waits for the header, so the client hears PROTOCOL_ERROR, not a bare close counted as malformed.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(on_the_wire(call_bytes(Counters, "ping", compact=codec.compact), codec))
        assert b"pong" in sock.recv(65536)  # the connection's codec is known
        sock.sendall(struct.pack("!i", 70_000))
        time.sleep(0.2)  # a slow network: the server reads the length alone
        sock.sendall(message_header(b"ping", codec.compact))
        reply = sock.recv(65536)
    error = application_error(reply, codec)
    assert error.message == "a request of 70000 bytes, over the server's maximum of 65536 (THRIFT_MAX_MESSAGE_BYTES)"
