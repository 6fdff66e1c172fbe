"""TThreadPoolServer: a fixed pool of worker threads behind one I/O thread.

thriftpy2 ships only a single-threaded and a thread-per-connection server.
Here one I/O thread (the caller of `serve()`) accepts connections and waits on
all of them with `selectors`; it reads framed messages (a 4-byte length, then
the message) and, once a whole message has arrived, hands that connection to
the worker queue. A worker decodes the message from memory, runs the handler,
writes the reply and hands the connection back to the I/O thread. So an idle
connection costs a file descriptor, never a worker, and a slow sender cannot
stall a worker halfway through a message.

Frames give exact message boundaries, which is what lets the I/O thread know
a request is complete without decoding it, and where the maximum message size
is enforced before its bytes are read. Workers check every message's declared
lengths (message_limits.py) before thriftpy2 decodes it. While no other
request waits, a worker lingers a moment on its connection for the next
request, saving two hand-offs for a client calling in a loop.

Once a second the I/O thread closes connections idle past the idle timeout or
stuck in a partial message (or TLS handshake, done step by step so that it
never blocks) past the read timeout. Past max_connections, new connections are
closed at once. `close()` stops accepting and reading; `serve()` then lets
queued and running requests finish (up to the drain timeout), closes every
connection and returns.

One process is limited by the GIL; `serve_in_processes()` forks several
copies that accept from the same listening socket (pre-fork), each with its
own workers and database pool.
"""

import logging
import os
import queue
import selectors
import signal
import socket
import ssl
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress

from thriftpy2.protocol import TCyBinaryProtocolFactory
from thriftpy2.server import TServer
from thriftpy2.thrift import TApplicationException, TProcessor, TType
from thriftpy2.transport import TCyMemoryBuffer

from message_limits import MalformedMessage, check_message

logger = logging.getLogger(__name__)
current_request = threading.local()  # .peer: the client address of the request a worker handles
FRAME_HEADER = struct.Struct("!i")
RECV_SIZE = 65536
LINGER_SECONDS = 0.002
MAX_NESTING = 16  # this API needs 2 (message, arguments); generous for unknown fields


class GuardedProcessor(TProcessor):
    """A TProcessor that answers an unexpected handler error with INTERNAL_ERROR.

    thriftpy2's TProcessor re-raises exceptions the IDL does not declare,
    which drops the client's connection; this logs the traceback once and
    sends TApplicationException(INTERNAL_ERROR), keeping the connection usable.
    `observe(method, peer, outcome, seconds, request_id)` is told of each request.
    """

    def __init__(self, service, handler: object, observe: Callable | None = None) -> None:
        super().__init__(service, handler)
        self.observe = observe

    def process_in(self, iprot):
        method, _, seqid = iprot.read_message_begin()
        if method not in self._service.thrift_services:
            iprot.skip(TType.STRUCT)
            logger.warning("unknown method %r", method)
            self._observe(method, "unknown_method", 0.0, None)
            return method, seqid, TApplicationException(TApplicationException.UNKNOWN_METHOD), None
        arguments = getattr(self._service, method + "_args")()
        arguments.read(iprot)
        result = getattr(self._service, method + "_result")()
        values = [getattr(arguments, spec[1]) for _, spec in sorted(arguments.thrift_spec.items())]
        declared = tuple(spec[2] for spec in result.thrift_spec.values() if spec[1] != "success")

        def call():
            started, outcome = time.perf_counter(), "ok"
            try:
                return getattr(self._handler, method)(*values)
            except declared as error:
                outcome = type(error).__name__
                raise
            except Exception:
                outcome = "internal_error"
                logger.exception("unexpected error in %s", method)
                raise TApplicationException(TApplicationException.INTERNAL_ERROR, "internal error") from None
            finally:
                self._observe(method, outcome, time.perf_counter() - started, getattr(arguments, "request_id", None))

        return method, seqid, result, call

    def _observe(self, method: str, outcome: str, seconds: float, request_id: str | None) -> None:
        if self.observe:
            self.observe(method, getattr(current_request, "peer", ""), outcome, seconds, request_id)

    def check_argument_types(self, method: str, argument_types: dict[int, int]) -> None:
        """Reject an argument of the wrong type, which thriftpy2 would silently drop."""
        arguments = getattr(self._service, method + "_args", None)
        for field_id, field_type in argument_types.items():
            spec = arguments.thrift_spec.get(field_id) if arguments else None
            if spec and spec[0] != field_type:
                raise MalformedMessage(f"argument {spec[1]!r} of {method} has type {field_type}, not {spec[0]}")


class _Connection:
    """A client socket and the bytes received from it that are not yet handled."""

    def __init__(self, sock: socket.socket, peer: str, handshaking: bool = False) -> None:
        self.sock = sock
        self.peer = peer
        self.received = bytearray()
        self.last_active = time.monotonic()
        self.handshaking = handshaking
        self.closed = False

    def take_frame(self, max_size: int) -> bytes | None:
        """Remove and return the next whole message, None if it is incomplete."""
        if len(self.received) < FRAME_HEADER.size:
            return None
        (size,) = FRAME_HEADER.unpack_from(self.received)
        if not 0 < size <= max_size:
            raise ValueError(f"frame of {size} bytes (maximum {max_size})")
        end = FRAME_HEADER.size + size
        if len(self.received) < end:
            return None
        frame = bytes(self.received[FRAME_HEADER.size : end])
        del self.received[:end]
        return frame

    def close(self) -> None:
        self.closed = True
        self.sock.close()


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
        self._selector: selectors.BaseSelector | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._ready = queue.SimpleQueue()  # connections holding a whole message
        self._handed_back = deque()  # connections workers have finished with
        self._connections: set[_Connection] = set()
        self._next_sweep = 0.0
        self._refused = 0  # connections refused over max_connections since the last warning
        self._next_refusal_warning = 0.0
        # Set in a forked child: if that parent dies (even by SIGKILL), drain and exit.
        self.parent_pid: int | None = None

    def listen(self) -> None:
        """Bind the listening socket; raises OSError if the address is taken."""
        self._listener = socket.create_server(self.address, backlog=1024)
        self._listener.setblocking(False)

    def serve(self) -> None:
        """Accept and serve until close() is called, then drain and return."""
        if self._listener is None:
            self.listen()
        listener = self._listener
        self._selector = selectors.DefaultSelector()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        threads = [threading.Thread(target=self._work, name=f"worker-{n}", daemon=True) for n in range(self.workers)]
        for thread in threads:
            thread.start()
        self.serving = True
        try:
            while not self._closing:
                self._poll(listener)
        finally:
            self.serving = False
            self._selector.unregister(listener)
            listener.close()
            self._drain(threads)

    def close(self) -> None:
        """Begin a graceful stop; safe to call from a signal handler or another thread."""
        self.serving = False
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        with suppress(BlockingIOError, AttributeError):  # a wake-up is pending / not serving yet
            self._wake_writer.send(b"\0")

    def _poll(self, listener: socket.socket) -> None:
        for key, _ in self._selector.select(timeout=1.0):
            if key.fileobj is listener:
                self._accept(listener)
            elif key.fileobj is self._wake_reader:
                self._wake_reader.recv(4096)
            else:
                self._receive(key.data)
        while self._handed_back:
            self._resume(self._handed_back.popleft())
        self._housekeeping()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. out of file descriptors; keep serving the others
                logger.warning("accept failed: %s", error)
                return
            if len(self._connections) >= self.max_connections:
                sock.close()
                self._refused += 1
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls:
                # The handshake runs step by step in _receive(), never blocking
                # this thread (thriftpy2 does it inside accept()).
                sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            # The I/O thread never waits on a client: sockets it watches are
            # non-blocking; a worker sets a timeout while it holds one.
            sock.settimeout(0)
            connection = _Connection(sock, f"{address[0]}:{address[1]}", handshaking=self.tls is not None)
            self._connections.add(connection)
            self._selector.register(sock, selectors.EVENT_READ, connection)

    def _receive(self, connection: _Connection) -> None:
        if connection.handshaking:
            self._continue_handshake(connection)
            return
        try:
            data = connection.sock.recv(RECV_SIZE)
            while isinstance(connection.sock, ssl.SSLSocket) and connection.sock.pending():
                data += connection.sock.recv(RECV_SIZE)  # decrypted bytes the selector cannot see
        except ssl.SSLWantReadError:
            return  # only part of a TLS record so far
        except OSError:
            data = b""  # a reset is an ordinary way for a client to leave
        if not data:
            self._forget(connection)
            return
        connection.received += data
        connection.last_active = time.monotonic()
        self._dispatch_if_ready(connection)

    def _continue_handshake(self, connection: _Connection) -> None:
        try:
            connection.sock.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except (ssl.SSLError, OSError) as error:
            logger.warning("closing %s: TLS handshake failed: %s", connection.peer, error)
            self._forget(connection)
            return
        connection.handshaking = False
        connection.last_active = time.monotonic()

    def _dispatch_if_ready(self, connection: _Connection) -> bool:
        try:
            frame = connection.take_frame(self.max_message_bytes)
        except ValueError as error:
            logger.warning("closing %s: %s", connection.peer, error)
            self._forget(connection)
            return True
        if frame is None:
            return False
        # One request at a time per connection keeps replies in order.
        self._selector.unregister(connection.sock)
        connection.sock.settimeout(self.idle_timeout)  # bounds a reply to a client that does not read
        self._ready.put((connection, frame))
        return True

    def _resume(self, connection: _Connection) -> None:
        if connection.closed:
            self._connections.discard(connection)
        elif self._closing:
            self._forget(connection)
        elif not self._dispatch_if_ready(connection):
            connection.sock.settimeout(0)
            self._selector.register(connection.sock, selectors.EVENT_READ, connection)

    def _forget(self, connection: _Connection) -> None:
        with suppress(KeyError, ValueError):  # not registered while a worker holds it
            self._selector.unregister(connection.sock)
        connection.close()
        self._connections.discard(connection)

    def _housekeeping(self) -> None:
        """Once a second: close idle and stalled connections, report refusals, watch the parent."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(1.0, self.idle_timeout / 2, self.read_timeout / 2)
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            logger.warning("parent process is gone; draining")
            self.close()
        if self.report_stats:
            self.report_stats(len(self._connections), self._busy_workers)
        if self._refused and now >= self._next_refusal_warning:
            logger.warning("refused %d connections: %d open is the maximum", self._refused, self.max_connections)
            self._refused = 0
            self._next_refusal_warning = now + 10
        for key in list(self._selector.get_map().values()):
            connection = key.data
            if connection is None:
                continue
            if (connection.received or connection.handshaking) and connection.last_active < now - self.read_timeout:
                logger.info("closing %s: no complete message within %ss", connection.peer, self.read_timeout)
                self._forget(connection)
            elif connection.last_active < now - self.idle_timeout:
                logger.debug("closing idle connection %s", connection.peer)
                self._forget(connection)

    def _work(self) -> None:
        while (item := self._ready.get()) is not None:
            connection, frame = item
            current_request.peer = connection.peer
            with self._busy_lock:
                self._busy_workers += 1
            while frame is not None:
                try:
                    reply = self._process(frame)
                    if reply:
                        connection.sock.sendall(FRAME_HEADER.pack(len(reply)) + reply)
                    connection.last_active = time.monotonic()
                    frame = None if self._closing or not self._ready.empty() else self._linger(connection)
                except OSError as error:
                    logger.info("closing %s: %s", connection.peer, error)
                    connection.close()
                    frame = None
                except Exception as error:  # noqa: BLE001 - a bad message from one client must not stop a worker
                    logger.warning(
                        "closing %s: malformed message (%s: %s)", connection.peer, type(error).__name__, error
                    )
                    connection.close()
                    frame = None
            with self._busy_lock:
                self._busy_workers -= 1
            self._handed_back.append(connection)
            self._wake()

    def _linger(self, connection: _Connection) -> bytes | None:
        """Wait briefly for this connection's next request; None if it does not come.

        A client calling in a loop sends its next request within a round trip.
        Serving it here, while no other request waits, saves two hand-offs
        between threads; a connection that stays quiet goes back to the I/O
        thread, so idle connections still hold no worker.
        """
        connection.sock.settimeout(LINGER_SECONDS)
        try:
            while (frame := connection.take_frame(self.max_message_bytes)) is None:
                data = connection.sock.recv(RECV_SIZE)
                if not data:
                    connection.close()
                    return None
                connection.received += data
            return frame
        except TimeoutError:
            return None
        finally:
            if not connection.closed:
                connection.sock.settimeout(self.idle_timeout)

    def _process(self, frame: bytes) -> bytes:
        method, argument_types = check_message(frame, MAX_NESTING)
        self.processor.check_argument_types(method, argument_types)
        itrans = TCyMemoryBuffer(frame)
        otrans = TCyMemoryBuffer()
        self.processor.process(self.iprot_factory.get_protocol(itrans), self.oprot_factory.get_protocol(otrans))
        return otrans.getvalue()

    def _drain(self, threads: list[threading.Thread]) -> None:
        for _ in threads:
            self._ready.put(None)  # after every request already queued
        deadline = time.monotonic() + self.drain_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = sum(thread.is_alive() for thread in threads)
        if unfinished:
            logger.warning("drain timeout: %d requests still running are abandoned", unfinished)
        for connection in list(self._connections):
            connection.close()
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()


def serve_in_processes(
    server: TThreadPoolServer,
    processes: int,
    prepare_child: Callable[[], None],
    children_started: Callable[[], None] = lambda: None,
    child_exited: Callable[[int], None] = lambda pid: None,
) -> None:
    """Run `processes` forked copies of `server` on its one listening socket.

    Call after server.listen() and before any thread starts. Each child runs
    prepare_child() (open its own database pool: connections must not cross a
    fork), then serve(). SIGTERM or SIGINT to this parent process drains every
    child; a child that dies otherwise is replaced. Returns when all have exited.
    children_started() runs once the first children are forked (a place to
    start threads, which must not exist at fork time); child_exited(pid) after
    each child ends.
    """
    children: set[int] = set()
    stopping = False

    def start_child() -> None:
        pid = os.fork()
        if pid:
            children.add(pid)
            return
        status = 1
        try:
            server.parent_pid = os.getppid()
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: server.close())
            prepare_child()
            server.serve()
            status = 0
        except BaseException:
            logger.exception("server process failed")
        finally:
            logging.shutdown()
            os._exit(status)

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    for _ in range(processes):
        start_child()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    children_started()
    while children:
        pid, status = os.wait()
        children.discard(pid)
        child_exited(pid)
        if not stopping:
            logger.error("server process %d exited with status %d; starting another", pid, status)
            time.sleep(1)  # no tight restart loop if children keep failing
            if not stopping:  # a SIGTERM may have arrived during the pause
                start_child()
    server._listener.close()
