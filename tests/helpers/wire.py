"""Raw Thrift bytes on a socket: well-formed calls, hand-made hostile ones, and what comes back."""

import socket
import struct

from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TCyMemoryBuffer


def call_bytes(service: type, method: str, *args: object) -> bytes:
    """A well-formed binary-protocol CALL of `service.method(*args)`, without a frame header."""
    buffer = TCyMemoryBuffer()
    protocol = TCyBinaryProtocol(buffer)
    protocol.write_message_begin(method, TMessageType.CALL, 1)
    getattr(service, method + "_args")(*args).write(protocol)
    return buffer.getvalue()


def framed(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


def message_header(name: bytes) -> bytes:
    """The start of a strict binary CALL named `name` (sequence id 1); fields follow."""
    return struct.pack("!iI", -2147418112 | TMessageType.CALL, len(name)) + name + struct.pack("!i", 1)


def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[bytes, str]:
    """Send raw bytes and half-close; everything the server sends back, and our address."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        peer = "{}:{}".format(*sock.getsockname())
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, peer


def send_and_hang_up(port: int, data: bytes) -> None:
    """Send `data` and close the socket without reading any reply."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)


def reply_names(received: bytes) -> list[str]:
    """The method names of the framed replies in `received`, in order."""
    names = []
    while received:
        (size,) = struct.unpack_from("!i", received)
        names.append(TCyBinaryProtocol(TCyMemoryBuffer(received[4 : 4 + size])).read_message_begin()[0])
        received = received[4 + size :]
    return names
