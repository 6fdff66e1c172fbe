"""Raw Thrift bytes on a socket: well-formed calls in either protocol, hand-made hostile ones, and what comes back."""

import errno
import fcntl
import select
import socket
import struct
import termios
import threading
import time
from contextlib import suppress

from thriftpy2.protocol import TCompactProtocol, TCyBinaryProtocol
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TCyMemoryBuffer

from servicekit.wire import Codec
from tools.throwaway_db import wait_for

# Every transport and protocol a connection may speak, as pytest ids see them.
CODECS = [Codec(framed, compact) for framed in (True, False) for compact in (False, True)]


def call_bytes(service: type, method: str, *args: object, compact: bool = False) -> bytes:
    """A well-formed CALL of `service.method(*args)` in the binary (or compact) protocol, without a frame header."""
    buffer = TCyMemoryBuffer()
    protocol = TCompactProtocol(buffer) if compact else TCyBinaryProtocol(buffer)
    protocol.write_message_begin(method, TMessageType.CALL, 1)
    getattr(service, method + "_args")(*args).write(protocol)
    return buffer.getvalue()


def reply_bytes(service: type, method: str, success: object) -> bytes:
    """A well-formed REPLY of `service.method` returning `success`, in the binary protocol, without a frame."""
    buffer = TCyMemoryBuffer()
    protocol = TCyBinaryProtocol(buffer)
    protocol.write_message_begin(method, TMessageType.REPLY, 0)
    getattr(service, method + "_result")(success=success).write(protocol)
    return buffer.getvalue()


def application_error(reply: bytes, codec: Codec) -> TApplicationException:
    """The TApplicationException a whole reply in `codec` holds (AssertionError if it holds none)."""
    buffer = TCyMemoryBuffer(reply[4:] if codec.framed else reply)
    protocol = TCompactProtocol(buffer) if codec.compact else TCyBinaryProtocol(buffer)
    assert protocol.read_message_begin()[1] == TMessageType.EXCEPTION
    error = TApplicationException()
    error.read(protocol)
    return error


def exception_reply(method: str, error: TApplicationException) -> bytes:
    """`error` as a framed binary reply to a call of `method`, as a server sends it."""
    buffer = TCyMemoryBuffer()
    protocol = TCyBinaryProtocol(buffer)
    protocol.write_message_begin(method, TMessageType.EXCEPTION, 0)
    error.write(protocol)
    return framed(buffer.getvalue())


def framed(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


def on_the_wire(message: bytes, codec: Codec) -> bytes:
    """`message` as a client speaking `codec` sends it."""
    return framed(message) if codec.framed else message


def varint(number: int) -> bytes:
    """An unsigned varint, as the compact protocol writes lengths and sizes."""
    out = bytearray()
    while number > 0x7F:
        out.append(number & 0x7F | 0x80)
        number >>= 7
    return bytes(out + bytes([number]))


def message_header(name: bytes, compact: bool = False, message_type: int = TMessageType.CALL) -> bytes:
    """The start of a message named `name` (a CALL unless told, sequence id 1); fields follow."""
    if compact:
        return bytes([0x82, message_type << 5 | 1, 1]) + varint(len(name)) + name
    return struct.pack("!iI", -2147418112 | message_type, len(name)) + name + struct.pack("!i", 1)


RESET = (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN)  # how a server's close with bytes unread shows


def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[bytes, str]:
    """Send raw bytes and half-close; everything the server sends back, and our address.

    A server that closes before taking everything resets the connection, after what it sent (an error reply).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        peer = "{}:{}".format(*sock.getsockname())
        received = b""
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:  # the reset stopped the send; the reply came before it, and is still there to read
            if error.errno not in RESET:
                raise
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except OSError as error:
            if error.errno not in RESET:
                raise
        return received, peer


def send_and_hang_up(port: int, data: bytes) -> None:
    """Send `data` and close the socket without reading any reply."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)


def refusal_of_a_call_ended_late(sock: socket.socket, service: type, compact: bool) -> TApplicationException:
    """Send an unframed call of 300 kB but its last bytes, which go only once the server has ended its side (its
    refusal of the call as too long sent); what the server answered, read to the end of file.

    As Java's TSocket writes a call (its long string, then the fields after it), but later: closed with the call
    unread, the server would reset the connection, and the refusal would never be read.
    """
    whole = call_bytes(service, "add", "x" * 300_000, 1, "pieces-1", compact=compact)
    sock.sendall(whole[:-16])
    ended = select.poll()
    ended.register(sock, select.POLLRDHUP)
    assert ended.poll(10_000)  # the server ended its side (or reset the connection)
    sock.sendall(whole[-16:])
    received = bytearray()
    while chunk := sock.recv(65536):  # over TLS its end comes without a close_notify: read as the end of file
        received += chunk
    return application_error(bytes(received), Codec(framed=False, compact=compact))


def reply_names(received: bytes) -> list[str]:
    """The method names of the framed binary replies in `received`, in order."""
    names = []
    while received:
        (size,) = struct.unpack_from("!i", received)
        names.append(TCyBinaryProtocol(TCyMemoryBuffer(received[4 : 4 + size])).read_message_begin()[0])
        received = received[4 + size :]
    return names


def unread_bytes(sock: socket.socket) -> int:
    """How many received bytes `sock` holds that nobody has read yet."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.FIONREAD, b"\0" * 4))[0]


def unacknowledged_bytes(sock: socket.socket) -> int:
    """How many bytes `sock` has sent, or holds to send, that its peer has not yet acknowledged."""
    return struct.unpack("i", fcntl.ioctl(sock, termios.TIOCOUTQ, b"\0" * 4))[0]


class _ListeningServer:
    """A listener on 127.0.0.1 (`port`) whose thread hands each connection it accepts to `_accepted`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with suppress(OSError):  # the listener closed
            while True:
                self._accepted(self.listener.accept()[0])

    def _accepted(self, sock: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)


class FixedReplyServer(_ListeningServer):
    """Answers every request on any connection with `chunks`, `pause` seconds apart (a slow network): a server
    of something else, as a client sees it."""

    def __init__(self, *chunks: bytes, pause: float = 0.0) -> None:
        self.chunks, self.pause = chunks, pause
        super().__init__()

    def _accepted(self, sock: socket.socket) -> None:
        threading.Thread(target=self._answer, args=(sock,), daemon=True).start()

    def _answer(self, sock: socket.socket) -> None:
        with sock, suppress(OSError):
            while sock.recv(65536):
                for number, chunk in enumerate(self.chunks):
                    time.sleep(self.pause if number else 0)
                    sock.sendall(chunk)


class ResettingServer(_ListeningServer):
    """Resets every connection as it accepts it, unread, once it has sent `said` (nothing unless given): a server
    that refuses a request before taking it all, or a server of something else that answers before it resets."""

    def __init__(self, said: bytes = b"") -> None:
        self.said = said
        super().__init__()

    def _accepted(self, sock: socket.socket) -> None:
        sock.sendall(self.said)
        # Until the client has them: on loopback the reset, sent from another core, can overtake the bytes (a
        # reset socket drops what arrives after), and the client would not read what was said.
        wait_for(lambda: not unacknowledged_bytes(sock), 10, "the client to take what was said")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed with RST
        sock.close()


class SilentServer:
    """Accepts connections and never answers: a hung server."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []

    def accepted_one(self) -> bool:
        self.listener.settimeout(0.05)
        try:
            self.accepted.append(self.listener.accept()[0])
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        for sock in [*self.accepted, self.listener]:
            sock.close()
