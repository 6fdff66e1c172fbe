"""TThreadPoolServer: a fixed pool of worker threads sharing one epoll set.

thriftpy2 ships only a single-threaded and a thread-per-connection server.
Here every open connection sits in one epoll set with EPOLLONESHOT, and each
worker thread waits on that set itself: the kernel gives a ready connection
to exactly one waiting worker, which reads what has arrived, and once a whole
framed message (a 4-byte length, then the message) is in, decodes it from
memory, runs the handler, writes the reply and re-arms the connection. No
thread hands a request to another (each hand-off is a thread switch and a
wait for the GIL), yet an idle connection costs a file descriptor, never a
worker, and a slow sender never holds a worker: a partial message is kept and
the worker moves on.

Frames give exact message boundaries, which is what lets a worker know a
request is complete without decoding it, and where the maximum message size
is enforced before its bytes are read. Workers check every message's declared
lengths (wire.py) before thriftpy2 decodes it. New connections and
TLS handshakes (step by step, never blocking) are handled the same way.

The thread that calls `serve()` keeps house once a second: it closes
connections idle past the idle timeout or stuck in a partial message past the
read timeout, and reports counts. Past max_connections, new connections are
closed at once. `close()` stops accepting and reading; `serve()` then lets
running requests finish (up to the drain timeout), closes every connection
and returns. epoll makes this engine Linux-only (as in the Docker image).

One process is limited by the GIL; prefork.py forks several copies that
accept from the same listening socket, each with its own workers and pool.
"""

import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress

from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.server import TServer
from thriftpy2.transport import TCyMemoryBuffer

from servicekit.processor import GuardedProcessor, current_request
from servicekit.wire import MalformedMessage, check_argument_types, check_message

logger = logging.getLogger(__name__)
FRAME_HEADER = struct.Struct("!i")
RECV_SIZE = 65536
HOUSEKEEPING_SECONDS = 1.0
# Reported once, to one worker, then disarmed until that worker re-arms it.
ARMED_TO_READ = select.EPOLLIN | select.EPOLLONESHOT
MAX_NESTING = 16  # a message and its arguments are 2; generous for nested structs and unknown fields


class _Connection:
    """A client socket and the bytes received from it that are not yet handled.

    Whoever reads, writes, re-arms or closes it holds `lock`: a worker while
    it serves the connection, the housekeeper while it closes an idle one.
    """

    def __init__(self, sock: socket.socket, peer: str, handshaking: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.received = bytearray()
        self.last_active = time.monotonic()
        self.handshaking = handshaking
        self.closed = False
        self.lock = threading.Lock()

    def take_frame(self, max_size: int) -> bytes | None:
        """Remove and return the next whole message, None if it is incomplete."""
        if len(self.received) < FRAME_HEADER.size:
            return None
        (size,) = FRAME_HEADER.unpack_from(self.received)
        if not 0 < size <= max_size:  # refused before any of it is read
            raise MalformedMessage(f"frame of {size} bytes (maximum {max_size})")
        end = FRAME_HEADER.size + size
        if len(self.received) < end:
            return None
        frame = bytes(self.received[FRAME_HEADER.size : end])
        del self.received[:end]
        return frame


class TThreadPoolServer(TServer):
    """Serves framed binary-protocol Thrift with `workers` threads; see module docstring."""

    def __init__(
        self,
        processor: GuardedProcessor,
        host: str,
        port: int,
        workers: int,
        idle_timeout: float,
        read_timeout: float,
        drain_timeout: float,
        max_message_bytes: int,
        max_connections: int,
        tls: ssl.SSLContext | None = None,
        report_stats: Callable[[int, int], None] | None = None,
    ) -> None:
        # thriftpy2's TServerSocket sets SO_REUSEPORT, which lets a second
        # server bind the same port silently; this server owns a plain socket.
        super().__init__(processor, trans=None, iprot_factory=TCyBinaryProtocolFactory())
        self.address = (host, port)
        self.workers = workers
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.drain_timeout = drain_timeout
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.tls = tls
        self.report_stats = report_stats  # called each second with (open connections, busy workers)
        self.serving = False
        self._busy_workers = 0
        self._busy_lock = threading.Lock()
        # A plain flag, not a threading.Event: close() runs in signal handlers,
        # which may interrupt each other, and Event.set() takes a lock.
        self._closing = False
        self._listener: socket.socket | None = None
        # Created by serve(), so that each forked server process has its own.
        self._epoll: select.epoll | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._connections: dict[int, _Connection] = {}  # by file descriptor
        self._refused = 0  # connections refused over max_connections since the last warning
        self._next_refusal_warning = 0.0
        # Set in a forked child: if that parent dies (even by SIGKILL), drain and exit.
        self.parent_pid: int | None = None

    def listen(self) -> None:
        """Bind the listening socket; raises OSError if the address is taken.

        An IPv6 address binds IPv6 (create_server's default is IPv4 only);
        `::` binds every IPv4 and IPv6 address.
        """
        host = self.address[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server(
            self.address, family=family, backlog=1024, dualstack_ipv6=host == "::" and socket.has_dualstack_ipv6()
        )
        self._listener.setblocking(False)

    def close_listener(self) -> None:
        """Close the listening socket: the pre-fork parent, once its children have exited."""
        self._listener.close()

    def serve(self) -> None:
        """Accept and serve until close() is called, then drain and return."""
        if self._listener is None:
            self.listen()
        self._epoll = select.epoll()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_writer.setblocking(False)
        # The wake-up socket is level-triggered: once written to, every
        # worker's next wait returns at once.
        self._epoll.register(self._wake_reader, select.EPOLLIN)
        self._epoll.register(self._listener, ARMED_TO_READ)
        threads = [threading.Thread(target=self._work, name=f"worker-{n}", daemon=True) for n in range(self.workers)]
        for thread in threads:
            thread.start()
        self.serving = True
        woken = select.poll()
        woken.register(self._wake_reader, select.POLLIN)
        try:
            while not self._closing:
                woken.poll(HOUSEKEEPING_SECONDS * 1000)
                self._housekeeping()
        finally:
            self.serving = False
            self._epoll.unregister(self._listener)
            self._listener.close()
            self._drain(threads)

    def close(self) -> None:
        """Begin a graceful stop; safe to call from a signal handler or another thread."""
        self.serving = False
        self._closing = True
        with suppress(BlockingIOError, AttributeError):  # a wake-up is pending / not serving yet
            self._wake_writer.send(b"\0")

    def _work(self) -> None:
        listener = self._listener.fileno()
        while True:
            # One event per wait: the other ready connections stay for other workers.
            events = self._epoll.poll(HOUSEKEEPING_SECONDS, 1)
            if self._closing:  # the wake-up socket's event, or one that arrived too late
                return
            for fd, _ in events:
                if fd == listener:
                    self._accept()
                elif connection := self._connections.get(fd):
                    with connection.lock:
                        if not connection.closed:
                            self._serve_ready(connection)

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:  # e.g. out of file descriptors; keep serving the others
                logger.warning("accept failed: %s", error)
                break
            if len(self._connections) >= self.max_connections:
                sock.close()
                self._refused += 1
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                # The handshake runs step by step in _serve_ready(), never
                # blocking a worker (thriftpy2 does it inside accept()).
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            sock.setblocking(False)  # a worker never waits on one client
            connection = _Connection(sock, f"{address[0]}:{address[1]}", handshaking=self.tls is not None)
            self._connections[connection.fd] = connection
            self._epoll.register(connection.fd, ARMED_TO_READ)
        if not self._closing:
            self._epoll.modify(self._listener, ARMED_TO_READ)

    def _serve_ready(self, connection: _Connection) -> None:
        """Read what has arrived; answer every whole request; re-arm. Holds connection.lock."""
        if connection.handshaking:
            self._continue_handshake(connection)
            return
        try:
            data = connection.sock.recv(RECV_SIZE)
            while isinstance(connection.sock, ssl.SSLSocket) and connection.sock.pending():
                data += connection.sock.recv(RECV_SIZE)  # decrypted bytes epoll cannot see
        except (BlockingIOError, ssl.SSLWantReadError):
            data = None  # nothing yet, or only part of a TLS record
        except OSError:
            data = b""  # a reset is an ordinary way for a client to leave
        if data == b"":
            self._forget(connection)
            return
        if data:
            connection.received += data
            connection.last_active = time.monotonic()
        try:
            while (frame := connection.take_frame(self.max_message_bytes)) is not None:
                self._answer(connection, frame)
        except OSError as error:  # the client left mid-reply, or stopped reading it
            logger.info("closing %s: %s", connection.peer, error)
        except Exception as error:  # noqa: BLE001 - a bad message from one client must not stop a worker
            logger.warning("closing %s: malformed message (%s: %s)", connection.peer, type(error).__name__, error)
        else:
            if not self._closing:
                self._epoll.modify(connection.fd, ARMED_TO_READ)
                return
        self._forget(connection)

    def _answer(self, connection: _Connection, frame: bytes) -> None:
        current_request.peer = connection.peer
        with self._busy_lock:
            self._busy_workers += 1
        try:
            reply = self._process(frame)
        finally:
            with self._busy_lock:
                self._busy_workers -= 1
        if reply:
            self._send(connection.sock, FRAME_HEADER.pack(len(reply)) + reply)
        connection.last_active = time.monotonic()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sent = sock.send(data)
        except (BlockingIOError, ssl.SSLWantWriteError):
            sent = 0
        if sent < len(data):  # the client's receive buffer is full: wait for it, within bounds
            sock.settimeout(self.idle_timeout)
            try:
                sock.sendall(data[sent:])
            finally:
                sock.setblocking(False)

    def _continue_handshake(self, connection: _Connection) -> None:
        try:
            connection.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._epoll.modify(connection.fd, ARMED_TO_READ)
            return
        except ssl.SSLWantWriteError:
            self._epoll.modify(connection.fd, select.EPOLLOUT | select.EPOLLONESHOT)
            return
        except (ssl.SSLError, OSError) as error:
            logger.warning("closing %s: TLS handshake failed: %s", connection.peer, error)
            self._forget(connection)
            return
        connection.handshaking = False
        connection.last_active = time.monotonic()
        self._serve_ready(connection)  # the client may have sent its first request already

    def _forget(self, connection: _Connection) -> None:
        """Close a connection; the caller holds its lock."""
        connection.closed = True
        # Out of the table before the descriptor is closed and can be reused.
        self._connections.pop(connection.fd, None)
        connection.sock.close()  # which also removes it from the epoll set

    def _housekeeping(self) -> None:
        """Close idle and stalled connections, report counts and refusals, watch the parent."""
        now = time.monotonic()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            logger.warning("parent process is gone; draining")
            self.close()
        if self.report_stats:
            self.report_stats(len(self._connections), self._busy_workers)
        if self._refused and now >= self._next_refusal_warning:
            logger.warning("refused %d connections: %d open is the maximum", self._refused, self.max_connections)
            self._refused = 0
            self._next_refusal_warning = now + 10
        for connection in list(self._connections.values()):
            if not connection.lock.acquire(blocking=False):
                continue  # a worker is serving it
            try:
                if connection.closed:
                    continue
                if (connection.received or connection.handshaking) and connection.last_active < now - self.read_timeout:
                    logger.info("closing %s: no complete message within %ss", connection.peer, self.read_timeout)
                    self._forget(connection)
                elif connection.last_active < now - self.idle_timeout:
                    logger.debug("closing idle connection %s", connection.peer)
                    self._forget(connection)
            finally:
                connection.lock.release()

    def _process(self, frame: bytes) -> bytes:
        method, argument_types = check_message(frame, MAX_NESTING)
        check_argument_types(method, argument_types, self.processor.argument_spec(method))
        itrans = TCyMemoryBuffer(frame)
        otrans = TCyMemoryBuffer()
        self.processor.process(self.iprot_factory.get_protocol(itrans), self.oprot_factory.get_protocol(otrans))
        return otrans.getvalue()

    def _drain(self, threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + self.drain_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = sum(thread.is_alive() for thread in threads)
        if unfinished:
            logger.warning("drain timeout: %d requests still running are abandoned", unfinished)
        for connection in list(self._connections.values()):
            connection.sock.close()
        self._epoll.close()
        self._wake_reader.close()
        self._wake_writer.close()
