"""TThreadPoolServer: the engine, where every request enters the server and its reply leaves.

It accepts connections, checks each message (wire.py), runs it through GuardedProcessor (processor.py) on one
of a fixed pool of worker threads, and writes the reply back. Why it is built this way: the class docstring.
"""

import logging
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress

from thriftpy2.protocol import TCompactProtocolFactory, TCyBinaryProtocolFactory
from thriftpy2.server import TServer
from thriftpy2.thrift import TApplicationException
from thriftpy2.transport import TCyMemoryBuffer

from servicekit import wire
from servicekit.binary_protocol import UNSUPPORTED_CLIENT_TYPE
from servicekit.processor import GuardedProcessor
from servicekit.wire import EMPTY_FRAME, FRAME_HEADER, FRAMED_BINARY, Codec, Message

logger = logging.getLogger(__name__)
RECV_SIZE = 65536
# After refusing a call over THRIFT_MAX_MESSAGE_BYTES, what of its rest the server reads and drops before closing.
LINGER_BYTES = 1 << 20
HOUSEKEEPING_SECONDS = 1.0
WARNING_INTERVAL_SECONDS = 10.0  # rate limit of the refusal and accept-failure warnings
# Lines any client can cause, one per connection: marked so that logging (observability.py) caps each kind.
CONNECTION_ERROR = {"client_error": "connection errors"}
MALFORMED_MESSAGE = {"client_error": "malformed messages"}
OFF_CONTRACT = {"client_error": "calls off the IDL"}
TOO_LONG = {"client_error": "calls over THRIFT_MAX_MESSAGE_BYTES"}
FAILED_HANDSHAKE = {"client_error": "failed TLS handshakes"}
TIMED_OUT = {"client_error": "connections closed at the read timeout"}
OVER_BUDGET = {"client_error": "connections closed over the buffered bytes"}
# The listener is reported once, to one worker, then disarmed until that worker re-arms it.
ARMED_TO_ACCEPT = select.EPOLLIN | select.EPOLLONESHOT
# Connections are edge-triggered: an event each time bytes arrive (or, once
# asked for, the send buffer frees up), and no epoll_ctl per request, which
# would be a system call and a GIL release each time.
# EPOLLRDHUP: the client shut down its side; the bytes before it may come
# with the same event, and the end of file is read only after them.
READABLE = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
READABLE_OR_WRITABLE = READABLE | select.EPOLLOUT
HUNG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 seconds
MAX_NESTING = 16  # a message and its arguments are 2; generous for nested structs and unknown fields
BINARY, COMPACT = TCyBinaryProtocolFactory(), TCompactProtocolFactory()
KEPT_BUFFER_BYTES = 1 << 20  # a worker's buffers grow to its largest message and reply: past this, new ones
# A TLS port answers a plain-text call with this error, and a plain port a TLS handshake with a fatal
# handshake_failure alert: either way the client reports a refusal at once, instead of a reset it retries.
TLS_ONLY = TApplicationException(UNSUPPORTED_CLIENT_TYPE, "this server accepts TLS only")
HANDSHAKE_FAILURE_ALERT = bytes((0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28))  # type, version, length; fatal, 40
# How long a staying worker waits for its connection's next request (see _stay): SO_RCVTIMEO, a struct timeval.
# The kernel rounds it up to its clock tick: waits of 7-12 ms where HZ=250.
STAY_TIMEOUT = struct.pack("ll", 0, 2000)
# How long a staying worker goes on after the last moment another worker waited on the set (see _stay):
# longer than a usual call, so that with as many active connections as workers the one served through
# epoll does not make the others give theirs back each time its worker is busy; short enough that a new
# client, while every worker is busy or staying, waits no longer than this for one to come back.
STAY_WITHOUT_WAITER_SECONDS = 0.02


def bind(host: str, port: int) -> socket.socket:
    """A listening socket; OSError if the address is taken.

    An IPv6 address binds IPv6 (create_server's default is IPv4 only);
    `::` binds every IPv4 and IPv6 address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    dual_stack = host == "::" and socket.has_dualstack_ipv6()
    return socket.create_server((host, port), family=family, backlog=1024, dualstack_ipv6=dual_stack)


class _Connection:
    """A client socket, the bytes received from it not yet answered, and the reply bytes it has not taken.

    Whoever reads, writes or closes it holds `lock`: a worker while it serves
    the connection, the housekeeper while it closes a stalled one. An event
    that comes meanwhile sets `pending`, for the holder to serve it.
    """

    def __init__(self, sock: socket.socket, peer: str, handshaking: bool = False) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.received = bytearray()  # grows in place: an unframed walk in progress reads it
        self.counted = 0  # its share of the server's buffered bytes, as last counted
        self.unsent = memoryview(b"")
        self.codec: Codec | None = None  # detected from the first bytes
        self.walking = None  # the walk of an unframed message not yet complete
        self.pending = False  # an event for it may not have been served yet (see _serve_events)
        self.watching_writes = False  # epoll also reports it when writable
        self.staying = False  # out of the epoll set: a worker waits in recv() for its next request (_stay)
        self.hung_up = False  # epoll reported the client's end of file (or an error)
        self.discarding = 0  # refused, answered no more: the bytes still read and dropped before closing (_linger)
        self.last_active = time.monotonic()
        self.handshaking = handshaking
        self.closed = False
        self.lock = threading.Lock()

    @property
    def epoll_events(self) -> int:
        return READABLE_OR_WRITABLE if self.watching_writes else READABLE


class _Worker:
    """What one worker thread reuses for every request (its decode and encode buffers), and whether it runs one."""

    def __init__(self, number: int) -> None:
        self.number = number  # its place in TThreadPoolServer._waiting
        self.busy = False
        self.new_buffers()

    def new_buffers(self) -> None:
        self.input, self.output = TCyMemoryBuffer(), TCyMemoryBuffer()
        self.binary = BINARY.get_protocol(self.input), BINARY.get_protocol(self.output)

    def compact_protocols(self) -> tuple:
        """thriftpy2's compact protocol keeps state within a message (the Cython binary one does not): a fresh pair."""
        return COMPACT.get_protocol(self.input), COMPACT.get_protocol(self.output)


class TThreadPoolServer(TServer):
    """Serves Thrift (framed or not, binary or compact) with `workers` threads sharing one epoll set.

    thriftpy2 ships only a single-threaded and a thread-per-connection server.
    Here every open connection sits in one epoll set, edge-triggered, and each
    worker thread waits on that set itself: the kernel gives each event to one
    waiting worker, which reads what has arrived and answers every whole message
    in it from memory; an event for a connection another worker is serving is
    left to that worker. No thread hands a request to another (each hand-off is
    a thread switch and a wait for the GIL), yet an idle connection costs a file
    descriptor, never a worker, and no worker ever waits on a client: a partial
    message is kept (up to max_buffered_bytes for all connections together: past
    it, the connection that adds more is closed), and a reply the client is slow
    to take is kept too and sent when the socket is writable (EPOLLOUT); until
    it is, no more requests are read from that connection.

    Each connection speaks the Thrift its first bytes show (wire.detect):
    framed or unframed, strict binary or compact, and is answered the same way
    for its whole life. Workers check every message before thriftpy2 decodes
    it: a call of a known shape (wire.known_calls, what stock clients send for
    numbers-only arguments) in one step, any other by walking it (wire.walk),
    which checks every declared length and is how an unframed message's end is
    found. Each worker decodes into and encodes from its own reused buffers.
    New connections and TLS handshakes (step by step, never blocking) are
    handled the same way; a TLS port answers a plain-text call with TLS_ONLY
    and a plain port a TLS handshake with an alert, before the connection
    closes. A whole call the IDL does not allow (wire.OffContract) gets
    PROTOCOL_ERROR saying why, and the connection stays; one too long, or
    whose end is not known, is told so before the connection closes. While
    no more connections are active than there are workers, the worker that
    answered a plain connection stays on it while another worker waits on the
    set (or did within STAY_WITHOUT_WAITER_SECONDS): it waits in recv() for the
    next request as a thread-per-connection server would, and gives the
    connection back when the client goes quiet, no other worker has waited for
    that long, or more connections become active (_stay). A drain closes idle connections at once.

    The thread that calls `serve()` keeps house once a second: it closes
    connections idle past the idle timeout, or stuck in a partial message or an
    untaken reply past the read timeout, and reports counts. Past
    max_connections, new connections are closed at once; out of file
    descriptors or epoll watches, accepting pauses until the next round.
    `close()` stops accepting and reading; `serve()` then lets running requests
    finish and sends the rest of the replies clients are still reading (up to
    the drain timeout; one cut short is reset), closes every connection and returns. epoll
    makes this engine Linux-only (as in the Docker image).

    One process is limited by the GIL; prefork.py forks several copies that
    accept from the same listening socket, each with its own workers and pool.
    """

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
        max_buffered_bytes: int,
        tls: ssl.SSLContext | None = None,
        report_stats: Callable[[int, int, Counter[str]], None] | None = None,
    ) -> None:
        # thriftpy2's TServerSocket sets SO_REUSEPORT, which lets a second
        # server bind the same port silently; this server owns a plain socket.
        super().__init__(processor, trans=None)
        self._spec_of = processor.call_specs.get
        self._known_calls = wire.known_calls(processor.argument_specs)
        self.address = (host, port)
        self.workers = workers
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.drain_timeout = drain_timeout
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self._buffered = 0  # bytes of unfinished requests held by every connection (_buffer)
        self._closed: Counter[str] = Counter()  # connections the server closed since the last report, by reason
        self._counts_lock = threading.Lock()  # for both
        self.tls = tls
        # Called each second with the open connections, the busy workers and the connections closed since.
        self.report_stats = report_stats
        self.serving = False
        self._workers: list[_Worker] = []
        self._waiting: list[bool] = []  # by worker number: in epoll_wait
        self._last_waited = 0.0  # when a worker last came back from epoll_wait (time.monotonic)
        self._dontwait = 0 if tls else socket.MSG_DONTWAIT  # plain sockets block, for a stay's recv() only
        self._can_stay = workers > 1 and not tls  # see _stay
        self._few_active = True  # at most `workers` connections active in the last second (_housekeeping)
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
        self._accept_paused = False  # out of descriptors: the housekeeper re-arms the listener
        self._next_accept_warning = 0.0
        # Set in a forked child: if that parent dies (even by SIGKILL), drain and exit.
        self.parent_pid: int | None = None

    def listen(self) -> None:
        """Bind the listening socket; raises OSError if the address is taken."""
        self._listener = bind(*self.address)
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
        self._epoll.register(self._listener, ARMED_TO_ACCEPT)
        if self._closing:  # close() came before the wake-up socket existed (SIGTERM at start-up)
            self._wake_writer.send(b"\0")
        self._workers = [_Worker(number) for number in range(self.workers)]
        self._waiting = [False] * self.workers
        threads = [
            threading.Thread(target=self._work, args=(worker,), name=f"worker-{n}", daemon=True)
            for n, worker in enumerate(self._workers)
        ]
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
            # A call sent now on an idle connection would wait for the drain, unread: closed, it is
            # retried elsewhere at once. A worker closes the connection it holds when it lets go
            # (_serve_events, _give_back).
            for connection in list(self._connections.values()):
                self._close_if_free(connection, because="", keep_unsent=True)
            running = sum(worker.busy for worker in self._workers)
            logger.info("draining: %d requests running; waiting up to %gs for them", running, self.drain_timeout)
            self._drain(threads)

    def close(self) -> None:
        """Begin a graceful stop; safe to call from a signal handler or another thread."""
        self.serving = False
        self._closing = True
        with suppress(BlockingIOError, AttributeError):  # a wake-up is pending / not serving yet
            self._wake_writer.send(b"\0")

    def _work(self, worker: _Worker) -> None:
        listener = self._listener.fileno()
        while True:
            # One event per wait: the other ready connections stay for other workers.
            # No timeout: close() wakes every worker, and a worker woken for nothing
            # would be first in line for the next event (epoll wakes the latest waiter).
            self._waiting[worker.number] = True
            events = self._epoll.poll(-1, 1)
            self._waiting[worker.number] = False
            self._last_waited = time.monotonic()
            if self._closing:  # the wake-up socket's event, or one that arrived too late
                return
            for fd, mask in events:
                if fd == listener:
                    self._accept()
                elif connection := self._connections.get(fd):
                    if mask & HUNG_UP:
                        connection.hung_up = True
                    try:
                        self._serve_events(connection, worker)
                    except Exception:  # a defect in serving one connection must not cost the server a worker
                        logger.exception("unexpected error serving %s: closing it", connection.peer)
                        self._close_if_free(connection, because="internal_error")

    def _close_if_free(self, connection: _Connection, because: str, keep_unsent: bool = False) -> None:
        """Close a connection unless a worker holds it now (see _forget for `because`), or, with keep_unsent, its
        client is still taking a reply (the drain sends the rest: _close_draining)."""
        if connection.lock.acquire(False):
            try:
                if not connection.closed and not (keep_unsent and connection.unsent):
                    self._forget(connection, because=because)
            finally:
                connection.lock.release()

    def _stay(self, connection: _Connection, worker: _Worker) -> None:
        """Serve `connection` from recv() while few are active, as a thread-per-connection server would.

        With a few clients calling in a loop, each call through epoll costs
        a wait, a wake-up and often a different worker (the reply wakes the
        client before the worker is back in epoll_wait). So the worker that
        answered takes the connection out of the epoll set and waits in a
        blocking recv() for up to STAY_TIMEOUT, answering each request, as
        long as no more connections are active than there are workers and
        another worker is waiting on the set for everyone else. A quiet
        client, part of a message left over, a reply the client does not
        take at once, no other worker waiting (each busy or staying) for
        STAY_WITHOUT_WAITER_SECONDS, or more connections becoming active (seen
        within a second) puts it back.
        Holds connection.lock; _serve_events serves what came meanwhile.
        """
        self._epoll.unregister(connection.fd)
        connection.staying, connection.pending = True, False
        try:
            self._answer_while_staying(connection, worker)
        except Exception as error:  # noqa: BLE001 - as in _serve_ready
            self._close_after(connection, error)
        finally:
            connection.staying = False
            if not connection.closed:
                connection.last_active = time.monotonic()
                self._give_back(connection)

    def _answer_while_staying(self, connection: _Connection, worker: _Worker) -> None:
        """_stay's loop: each request as it arrives, while nothing is left over, few are active and a worker waits.

        A lone framed binary call of a known shape takes the lone-request
        path (_answer_whole) and no more: this loop is a call's whole cost
        in the engine while a worker stays. Anything else is buffered and
        answered by _answer_received; part of a message left over goes back
        to the epoll set with the connection.
        """
        receive = connection.sock.recv
        while True:
            try:
                data = receive(RECV_SIZE)
            except BlockingIOError:  # SO_RCVTIMEO ran out: a quiet client
                return
            except ConnectionError:
                data = b""
            if not data or self._closing:  # the client closed the connection; or, draining, a call not yet begun
                self._forget(connection)
                return
            # Another codec or shape, part of a message, or several: buffered.
            if not self._answer_whole(connection, data, worker) and not self._buffer(connection, data, worker):
                return
            if (
                self._closing  # then _give_back closes it
                or connection.received
                or connection.unsent
                or not (self._few_active and self._a_worker_waited())
            ):
                return

    def _a_worker_waited(self) -> bool:
        """Whether another worker waits on the set, or did within STAY_WITHOUT_WAITER_SECONDS."""
        return True in self._waiting or time.monotonic() - self._last_waited < STAY_WITHOUT_WAITER_SECONDS

    def _give_back(self, connection: _Connection) -> None:
        """Put a staying connection back in the epoll set, which reports it at once if bytes are waiting;
        close it if the server is draining."""
        if self._closing:
            self._close_draining(connection)
            return
        connection.watching_writes = bool(connection.unsent)  # else an idle socket's EPOLLOUT wakes a worker
        try:
            self._epoll.register(connection.fd, connection.epoll_events)
        except OSError as error:  # out of memory for epoll, or closed by a drain that timed out
            logger.warning("closing %s: %s", connection.peer, error)
            self._forget(connection)

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue  # reset before it was accepted
            except OSError as error:  # e.g. out of file descriptors: retrying at once would spin
                self._pause_accepting(error)
                return
            if len(self._connections) >= self.max_connections:
                sock.close()
                self._refused += 1
                with self._counts_lock:
                    self._closed["over_max_connections"] += 1
                continue
            try:
                self._add_connection(sock, address)
            except OSError as error:  # epoll can watch no more: as when out of descriptors
                self._pause_accepting(error)
                return
        if not self._closing:
            self._epoll.modify(self._listener, ARMED_TO_ACCEPT)

    def _pause_accepting(self, error: OSError) -> None:
        """Leave the listener disarmed until the next housekeeping round, warning at most every 10 s."""
        self._accept_paused = True
        now = time.monotonic()
        if now >= self._next_accept_warning:
            logger.warning(
                "cannot accept connections (%s) with %d open; accepting again in %gs",
                error.strerror or error,
                len(self._connections),
                HOUSEKEEPING_SECONDS,
            )
            self._next_accept_warning = now + WARNING_INTERVAL_SECONDS

    def _add_connection(self, sock: socket.socket, address: tuple) -> None:
        """Enter a new connection and have epoll watch it; OSError (and it closed) if epoll cannot."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            # The handshake runs step by step in _serve_ready(), never
            # blocking a worker (thriftpy2 does it inside accept()), once
            # the first bytes show one (_start_tls).
            sock.setblocking(False)
        else:
            sock.setblocking(True)  # whatever socket.getdefaulttimeout() a library may have set
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, STAY_TIMEOUT)
        connection = _Connection(sock, f"{address[0]}:{address[1]}", handshaking=self.tls is not None)
        # Under its lock until registered: an event a worker already took for an earlier connection on
        # the same descriptor must not serve (and perhaps close) this one first; it marks it pending.
        with connection.lock:
            self._connections[connection.fd] = connection
            try:
                self._epoll.register(connection.fd, READABLE)
            except OSError as error:  # out of kernel memory, or past sysctl fs.epoll.max_user_watches
                self._forget(connection)
                raise OSError(error.errno, f"epoll: {error.strerror}") from None
        if connection.pending:  # such an event, or its first bytes, came meanwhile: have epoll report it again
            with suppress(OSError):  # closed meanwhile
                self._epoll.modify(connection.fd, connection.epoll_events)

    def _serve_events(self, connection: _Connection, worker: _Worker) -> None:
        """Serve `connection` until no event for it is left unserved.

        Edge-triggered, a connection's events may wake several workers. Each
        marks it pending; the one that holds its lock serves it again as long
        as it is marked, and the others return to waiting.
        """
        connection.pending = True
        while connection.pending and connection.lock.acquire(False):
            try:
                connection.pending = False
                if not connection.closed and self._serve_ready(connection, worker):
                    # Stay while few connections are active and another worker waits, on plain TCP
                    # between requests. Under load neither holds: those tests first, inline, cost the least.
                    if (
                        self._few_active
                        and True in self._waiting
                        and self._can_stay
                        and not (connection.received or connection.unsent)
                    ):
                        self._stay(connection, worker)
                if self._closing and not connection.closed:  # draining: serve()'s sweep left it to this worker
                    self._close_draining(connection)
            finally:
                connection.lock.release()

    def _serve_ready(self, connection: _Connection, worker: _Worker) -> bool:
        """Take a TLS handshake a step on, send what is pending, or read what has arrived and answer whole
        requests. Holds connection.lock.

        True if it answered what came and the connection is open (then _serve_events may stay on it).
        """
        try:
            if connection.handshaking:
                self._continue_handshake(connection, worker)
                return False
            if connection.discarding:
                self._discard(connection)
                return False
            if connection.unsent:
                self._send_unsent(connection)
                if connection.unsent:
                    return False  # the client still takes nothing: wait for the send buffer to free up
                connection.pending = True  # requests not read while it was full: read them next
                self._answer_received(connection, worker)  # and first those read but not yet answered
            else:
                data = self._receive(connection)
                if data is None:
                    self._forget(connection)  # the client closed the connection
                    return False
                if not data:
                    return False  # nothing yet, or only part of a TLS record: no activity
                kept = len(connection.received)  # part of a message, from earlier reads
                if (kept or not self._answer_whole(connection, data, worker)) and not self._buffer(
                    connection, data, worker
                ):
                    return False
                # After the replies: idle from here, or a message started or completed. Not for
                # bytes that only extend a partial message: the read timeout bounds the whole message.
                if not kept or len(connection.received) < kept + len(data):
                    connection.last_active = time.monotonic()
        except Exception as error:  # noqa: BLE001 - a bad message from one client must not stop a worker
            self._close_after(connection, error)
            return False
        if self._closing:
            self._close_draining(connection)
            return False
        return True

    def _close_draining(self, connection: _Connection) -> None:
        """Close a connection as the server drains, unless its client has not yet taken all of a reply: the
        drain sends the rest (_send_replies). Holds its lock."""
        if not connection.unsent:
            self._forget(connection)

    def _close_after(self, connection: _Connection, error: Exception) -> None:
        """Close a connection whose serving raised: a client gone is logged at INFO, a bad message at WARNING
        (a TLS handshake or a call off the contract is first answered)."""
        if isinstance(error, OSError):  # the client left mid-reply, or reset the connection
            logger.info("closing %s: %s", connection.peer, error, extra=CONNECTION_ERROR)
            self._forget(connection, because="connection_error")
        elif isinstance(error, wire.TooLong):  # well formed, only longer than this server takes: not "malformed"
            logger.warning("closing %s: %s", connection.peer, error, extra=TOO_LONG)
            if self._say_before_closing(connection, self._refusal(connection.codec, error)):
                self._linger(connection)
            else:  # taken in part, it would end short of the refusal (over TLS, mid-record): closed at once
                self._forget(connection, because="over_max_message_bytes")
        else:
            logger.warning(
                "closing %s: malformed message (%s: %s)",
                connection.peer,
                type(error).__name__,
                error,
                extra=MALFORMED_MESSAGE,
            )
            if isinstance(error, wire.TLSToPlainPort):
                self._say_before_closing(connection, HANDSHAKE_FAILURE_ALERT)
            elif isinstance(error, wire.OffContract):  # told why, in its own codec, rather than cut off
                self._say_before_closing(connection, self._refusal(connection.codec, error))
            self._forget(connection, because="malformed_message")

    def _linger(self, connection: _Connection) -> None:
        """Close a connection whose call was refused as too long once its client has sent the rest of it.

        Closed with bytes unread, or with its client still writing, a socket
        is reset: a client that writes a call in pieces (Java's TSocket
        writes a long string apart from the fields after it) fails on its
        next write and never reads the refusal. So the server only ends its
        side (the refusal, then the end of file), and reads and drops up to
        LINGER_BYTES more (_discard) until the client closes, for at most
        the read timeout (_close_if_stalled). Over TLS the session is never
        used again: the end is TCP's, without a close_notify (the refusal's
        record has all been sent), and the rest is dropped unread by TLS.
        """
        with suppress(OSError):  # the client reset it already: read next, then closed
            connection.sock.shutdown(socket.SHUT_WR)  # an SSLSocket's drops its TLS session: no close_notify
        with self._counts_lock:
            self._buffered -= connection.counted
            connection.counted = 0
            self._closed["over_max_message_bytes"] += 1
        connection.received, connection.walking = bytearray(), None  # a new one: a walk's view may hold the old
        connection.discarding = LINGER_BYTES
        connection.last_active = time.monotonic()
        connection.pending = True  # bytes already waiting are read without another event

    def _discard(self, connection: _Connection) -> None:
        """Read and drop what a lingering connection's client sent; close at its end of file, or reset it once
        it has sent LINGER_BYTES."""
        while True:
            try:
                data = socket.socket.recv(connection.sock, RECV_SIZE, socket.MSG_DONTWAIT)  # TLS's raw bytes
            except BlockingIOError:
                return
            except ConnectionError:
                data = b""
            connection.discarding -= len(data)
            if not data or connection.discarding <= 0:
                self._forget(connection, reset=bool(data))
                return

    def _receive(self, connection: _Connection) -> bytes | None:
        """What has arrived (maybe nothing); None once the client has closed.

        One read at most: if more may be waiting (a full read; TLS, whose
        reads stop at a record; or the end of file after these bytes), the
        connection is marked to be read again after what is in hand is
        answered: edge-triggered, no new event comes for what is already there.
        """
        try:
            data = connection.sock.recv(RECV_SIZE, self._dontwait)
        except (BlockingIOError, ssl.SSLWantReadError):
            return b""  # nothing yet, or only part of a TLS record
        except ConnectionError:
            return None  # a reset is an ordinary way for a client to leave
        if not data:
            return None
        if len(data) == RECV_SIZE or self.tls or connection.hung_up:
            connection.pending = True
        return data

    def _answer_whole(self, connection: _Connection, data: bytes, worker: _Worker) -> bool:
        """Answer `data` if it is one whole framed binary call of a known shape: True if answered.

        Most requests arrive so, alone in one read; they skip the buffering and walk of _answer_received.
        """
        size = len(data) - FRAME_HEADER.size
        if (
            connection.codec is not FRAMED_BINARY
            or not 0 < size <= self.max_message_bytes
            or FRAME_HEADER.unpack_from(data)[0] != size
            or not self._known_calls.fullmatch(data, FRAME_HEADER.size)
        ):
            return False
        reply = self._process(connection, data[FRAME_HEADER.size :], worker)
        if reply:
            self._send(connection, reply)
        return True

    def _buffer(self, connection: _Connection, data: bytes, worker: _Worker) -> bool:
        """Add `data` to what `connection` has sent and answer every whole message; False if it was closed
        because the bytes left unanswered took the server's buffered bytes over max_buffered_bytes."""
        connection.received += data
        self._answer_received(connection, worker)
        held = len(connection.received)
        with self._counts_lock:
            self._buffered += held - connection.counted
            connection.counted = held
            over = held and self._buffered > self.max_buffered_bytes
        if over:
            logger.warning(
                "closing %s: its %d bytes of unfinished requests take the server's over %d (THRIFT_MAX_BUFFERED_BYTES)",
                connection.peer,
                held,
                self.max_buffered_bytes,
                extra=OVER_BUDGET,
            )
            self._forget(connection, because="over_buffered_bytes")
        return not over

    def _answer_received(self, connection: _Connection, worker: _Worker) -> None:
        """Answer every whole message received, until one's reply cannot be sent at once (backpressure)."""
        while connection.received and (message := self._take_message(connection)) is not None:
            reply = self._answer(connection, message, worker)
            if reply and not self._send(connection, reply):
                return

    def _take_message(self, connection: _Connection) -> bytearray | wire.OffContract | None:
        """Remove the next whole, checked message from connection.received; None if it is incomplete. A whole
        message whose call the IDL does not allow is removed too, and why is returned instead, to be answered."""
        received, codec = connection.received, connection.codec
        # Apache's TFramedTransport sends an empty frame when flushed with nothing written, first bytes included,
        # and Apache's servers skip it. No unframed message starts with one. Skipped in one step: a client may
        # send nothing else.
        if (codec is None or codec.framed) and received.startswith(EMPTY_FRAME):
            del received[: wire.EMPTY_FRAMES.match(received).end()]
        if codec is None and (codec := wire.detect(received, self.max_message_bytes)) is None:
            return None
        connection.codec = codec
        refusal = None
        if codec.framed:
            if len(received) < FRAME_HEADER.size:
                return None
            if (size := wire.frame_size(received, self.max_message_bytes)) is None:
                return None
            end = FRAME_HEADER.size + size
            if len(received) < end:
                return None
            data = received[FRAME_HEADER.size : end]
            if codec.compact or not self._known_calls.fullmatch(received, FRAME_HEADER.size, end):
                try:
                    self._check_types(wire.walk_whole(data, codec.compact, self._spec_of, MAX_NESTING))
                except wire.OffContract as off:  # its frame says where it ends: the connection stays in step
                    refusal = off
        else:
            if (walked := self._unframed_end(connection)) is None:
                return None
            end, refusal = walked
            data = received[:end]
        del received[:end]
        return refusal or data

    def _unframed_end(self, connection: _Connection) -> tuple[int, wire.OffContract | None] | None:
        """Where the unframed message at the start of connection.received ends, and why the IDL does not allow its
        call if it does not; None until it is all there."""
        received, compact = connection.received, connection.codec.compact
        if connection.walking is None:
            known = None if compact else self._known_calls.match(received, 0, self.max_message_bytes)
            if known:
                return known.end(), None
            connection.walking = wire.walk(received, self.max_message_bytes, compact, self._spec_of, MAX_NESTING)
        if (message := wire.resume(connection.walking)) is None:
            return None
        connection.walking = None
        try:
            self._check_types(message)
        except wire.OffContract as refusal:
            return message.end, refusal
        return message.end, None

    def _answer(self, connection: _Connection, message: bytearray | wire.OffContract, worker: _Worker) -> bytes:
        """The reply to a whole message: its call's, or a PROTOCOL_ERROR saying why the IDL does not allow the
        call (a client whose IDL drifted); its bytes are read past, so the connection stays in step."""
        if not isinstance(message, wire.OffContract):
            try:
                return self._process(connection, message, worker)
            except wire.OffContract as refusal:  # a string argument that is not UTF-8, found decoding it
                message = refusal
        logger.warning("refusing a call from %s: %s", connection.peer, message, extra=OFF_CONTRACT)
        if self.processor.observe:
            self.processor.observe(
                self.processor.method_name(message.call.name), connection.peer, "off_contract", 0.0, None
            )
        return self._refusal(connection.codec, message)

    def _refusal(self, codec: Codec, refusal: wire.OffContract) -> bytes:
        """The PROTOCOL_ERROR reply that says why, in `codec`; nothing for a one-way call, whose client reads none."""
        if refusal.call.one_way:
            return b""
        answer = TApplicationException(TApplicationException.PROTOCOL_ERROR, str(refusal))
        return self._error_reply(codec, refusal.call, answer)

    def _check_types(self, message: Message) -> None:
        wire.check_argument_types(message, self._spec_of(message.name))

    def _process(self, connection: _Connection, data: bytes | bytearray, worker: _Worker) -> bytes:
        """Decode, run and encode one checked message: the reply, framed if the connection is."""
        iprot, oprot = worker.compact_protocols() if connection.codec.compact else worker.binary
        worker.input.setvalue(data)
        worker.busy = True
        try:
            self.processor.process(iprot, oprot, connection.peer)
            reply = worker.output.getvalue()
        except Exception:
            worker.new_buffers()  # a reply that failed part-way may have grown the encode buffer
            raise
        finally:
            worker.busy = False
        worker.output.clean()
        if len(data) > KEPT_BUFFER_BYTES or len(reply) > KEPT_BUFFER_BYTES:
            worker.new_buffers()
        return FRAME_HEADER.pack(len(reply)) + reply if reply and connection.codec.framed else reply

    def _send(self, connection: _Connection, reply: bytes) -> bool:
        """Send `reply`; what the socket does not take now stays in connection.unsent. True if all was sent."""
        try:
            sent = connection.sock.send(reply, self._dontwait)
        except (BlockingIOError, ssl.SSLWantWriteError):
            sent = 0
        if sent < len(reply):
            connection.unsent = memoryview(reply)[sent:]
            self._notify_when_writable(connection)
            return False
        return True

    def _notify_when_writable(self, connection: _Connection) -> None:
        """From now on, also report the connection when its send buffer frees up (only after it was full)."""
        if not connection.watching_writes:
            if not connection.staying:  # else _give_back registers it so
                self._epoll.modify(connection.fd, READABLE_OR_WRITABLE)
            connection.watching_writes = True

    def _send_unsent(self, connection: _Connection) -> None:
        """Send what the socket takes now of connection.unsent."""
        try:
            sent = connection.sock.send(connection.unsent, self._dontwait)
        except (BlockingIOError, ssl.SSLWantWriteError):
            return
        if sent:
            connection.unsent = connection.unsent[sent:]
            connection.last_active = time.monotonic()

    def _continue_handshake(self, connection: _Connection, worker: _Worker) -> None:
        """A TLS handshake's next step (the first wraps the socket, _start_tls); then the first requests."""
        if not isinstance(connection.sock, ssl.SSLSocket) and not self._start_tls(connection):
            return
        try:
            connection.sock.do_handshake()
        except ssl.SSLWantReadError:
            return  # the client's next bytes are the next event
        except ssl.SSLWantWriteError:
            self._notify_when_writable(connection)
            return
        except (ssl.SSLError, OSError) as error:
            logger.warning("closing %s: TLS handshake failed: %s", connection.peer, error, extra=FAILED_HANDSHAKE)
            # What the client sent past the refused part of its handshake is read and dropped: closed with it
            # unread, the connection would be reset, and a TLS 1.3 client, whose handshake has ended, would see
            # its request's write fail instead of the alert saying why (a client certificate missing or refused).
            with suppress(OSError):
                socket.socket.recv(connection.sock, RECV_SIZE, socket.MSG_DONTWAIT)  # the raw bytes, not TLS's
            self._forget(connection, because="tls_handshake_failed")
            return
        connection.handshaking = False
        connection.last_active = time.monotonic()
        self._serve_ready(connection, worker)  # the client may have sent its first request already

    def _start_tls(self, connection: _Connection) -> bool:
        """Wrap a new connection in TLS if its first byte begins a handshake: True once wrapped.

        Anything else is closed; a plain-text Thrift call first gets a TLS_ONLY reply.
        """
        try:
            first = connection.sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError as error:
            self._close_after(connection, error)
            return False
        if first == wire.TLS_HANDSHAKE[:1]:
            return self._wrap(connection)
        if not first:
            self._forget(connection)
            return False
        codec = header = None
        with suppress(OSError, wire.MalformedMessage):
            data = connection.sock.recv(RECV_SIZE)
            if codec := wire.detect(data, self.max_message_bytes):
                header = wire.call_header(data, codec, self.max_message_bytes)
        what = f"plain-text {codec} Thrift, to a port that serves TLS only" if codec else "not a TLS handshake"
        # Logged before the client is told, as every refusal is: what it reads is in the log by then.
        logger.warning("closing %s: TLS handshake failed: %s", connection.peer, what, extra=FAILED_HANDSHAKE)
        if header:
            self._say_before_closing(connection, self._error_reply(codec, header, TLS_ONLY))
        self._forget(connection, because="tls_handshake_failed")
        return False

    def _wrap(self, connection: _Connection) -> bool:
        """Wrap the connection's socket in TLS: True, or False if the client had gone (and it is closed).

        CPython's wrap_socket closes the descriptor when the client reset with bytes unread (the peeked
        first one): the table entry goes before it, while the number is still this connection's, and
        comes back once wrapped (an event meanwhile is served by the handshake that follows).
        """
        del self._connections[connection.fd]
        try:
            connection.sock = self.tls.wrap_socket(connection.sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:
            logger.warning("closing %s: TLS handshake failed: %s", connection.peer, error, extra=FAILED_HANDSHAKE)
            self._forget(connection, because="tls_handshake_failed")
            return False
        self._connections[connection.fd] = connection
        return True

    def _say_before_closing(self, connection: _Connection, data: bytes) -> bool:
        """Send what the client should read before the connection closes, if its socket takes it now: True if
        it took all of it (over TLS, a whole record: OpenSSL keeps none of it to send later)."""
        try:
            return connection.sock.send(data, self._dontwait) == len(data)
        except OSError:  # the client left; over TLS also SSLWantWriteError: the socket took nothing, or part
            return False

    def _error_reply(self, codec: Codec, call: wire.Call, error: TApplicationException) -> bytes:
        """`error` as the reply to `call`, in `codec`, under the name its client matches replies by."""
        buffer = TCyMemoryBuffer()
        protocol = (COMPACT if codec.compact else BINARY).get_protocol(buffer)
        self.processor.send_exception(protocol, self.processor.method_name(call.name), error, call.seqid)
        reply = buffer.getvalue()
        return FRAME_HEADER.pack(len(reply)) + reply if codec.framed else reply

    def _forget(self, connection: _Connection, reset: bool = False, because: str = "") -> None:
        """Close a connection, with `reset` at once (RST): the kernel drops what it could not send. Holds its lock.

        `because`: why the server closes it (counted for the metrics); empty when the client left or at a drain.
        """
        if reset:
            connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
        connection.closed = True
        with self._counts_lock:
            self._buffered -= connection.counted
            connection.counted = 0
            if because:
                self._closed[because] += 1
        # Out of the table before the descriptor is closed and can be reused. After a failed _wrap it is
        # out already, and its number may be a new connection's.
        if self._connections.get(connection.fd) is connection:
            del self._connections[connection.fd]
        connection.sock.close()  # which also removes it from the epoll set

    def _housekeeping(self) -> None:
        """Close idle and stalled connections, report counts and refusals, resume accepting, watch the parent."""
        now = time.monotonic()
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            logger.warning("parent process is gone; draining")
            self.close()
        if self.report_stats:
            with self._counts_lock:
                closed, self._closed = self._closed, Counter()
            self.report_stats(len(self._connections), sum(worker.busy for worker in self._workers), closed)
        if self._refused and now >= self._next_refusal_warning:
            logger.warning(
                "refused %d connections: %d open is the maximum (THRIFT_MAX_CONNECTIONS)",
                self._refused,
                self.max_connections,
            )
            self._refused = 0
            self._next_refusal_warning = now + WARNING_INTERVAL_SECONDS
        if self._accept_paused and not self._closing:
            self._accept_paused = False
            self._epoll.modify(self._listener, ARMED_TO_ACCEPT)
        active, since = 0, now - HOUSEKEEPING_SECONDS
        for connection in list(self._connections.values()):
            active += connection.staying or connection.last_active >= since
            if not connection.lock.acquire(False):
                continue  # a worker is serving it
            try:
                if not connection.closed:
                    self._close_if_stalled(connection, now)
            finally:
                connection.lock.release()
            if connection.pending and not connection.closed:  # an event came while this thread held it
                with suppress(OSError):  # a worker closed it (or stays on it) meanwhile
                    self._epoll.modify(connection.fd, connection.epoll_events)  # reported again if still ready
        self._few_active = active <= self.workers

    def _close_if_stalled(self, connection: _Connection, now: float) -> None:
        """Close a connection past its read or idle timeout; the caller holds its lock."""
        if connection.discarding:  # refused: the client had the read timeout to send the rest
            if connection.last_active < now - self.read_timeout:
                self._forget(connection, reset=True)
            return
        stalled = connection.unsent or connection.received or connection.handshaking
        if connection.last_active >= now - (self.read_timeout if stalled else self.idle_timeout):
            return
        if connection.unsent:
            # A plain close would leave the kernel holding the reply until the client reads it.
            logger.info("closing %s: took no reply bytes for %gs", connection.peer, self.read_timeout, extra=TIMED_OUT)
            self._forget(connection, reset=True, because="read_timeout")
            return
        if stalled:
            logger.info(
                "closing %s: no complete message within %gs", connection.peer, self.read_timeout, extra=TIMED_OUT
            )
            self._forget(connection, because="read_timeout")
        else:
            logger.debug("closing idle connection %s", connection.peer)
            self._forget(connection, because="idle_timeout")

    def _drain(self, threads: list[threading.Thread]) -> None:
        deadline = time.monotonic() + self.drain_timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = sum(thread.is_alive() for thread in threads)
        if unfinished:
            logger.warning(
                "drain timeout: %d requests still running are abandoned after %gs (THRIFT_DRAIN_TIMEOUT)",
                unfinished,
                self.drain_timeout,
            )
        else:  # every worker has stopped: the connections are this thread's alone
            self._send_replies(deadline)
        for connection in list(self._connections.values()):
            if connection.unsent:  # cut short: closed plainly, the kernel would go on sending it after this exit
                connection.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            connection.sock.close()
        self._epoll.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _send_replies(self, deadline: float) -> None:
        """Send the rest of the replies clients have not yet taken, as their sockets take it, until `deadline`.

        A reply larger than the socket's buffers (a few MB, less over a slow network) is sent as the client
        reads it: closed with it unsent, a request that finished during the drain would reach its client
        cut short. A client that never reads holds the drain until `deadline`, and no longer.
        """
        replying = {fd: connection for fd, connection in self._connections.items() if connection.unsent}
        writable = select.poll()
        for fd in replying:
            writable.register(fd, select.POLLOUT)
        while replying and (left := deadline - time.monotonic()) > 0:
            for fd, _ in writable.poll(left * 1000):
                connection = replying[fd]
                try:
                    self._send_unsent(connection)
                except OSError:  # the client left: nothing more to send it
                    connection.unsent = memoryview(b"")
                if not connection.unsent:
                    writable.unregister(fd)
                    del replying[fd]
        if replying:
            logger.warning(
                "drain timeout: %d replies their clients did not take are cut short after %gs (THRIFT_DRAIN_TIMEOUT)",
                len(replying),
                self.drain_timeout,
            )
