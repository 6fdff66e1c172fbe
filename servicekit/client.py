"""PooledClient: a thread-safe, pooled, retrying, failing-over client of any service on the kit.

Where every request starts: a service's typed client (its client.py) subclasses it with one method per RPC, each
a `self.call("method", ...)`. Connections speak framed binary Thrift, optionally over TLS, to every address of the
servers (addresses.py); connection failures, timeouts and Unavailable are retried with the same request_id.
"""

import contextlib
import enum
import itertools
import os
import random
import re
import socket
import ssl
import threading
import time
import uuid
import weakref
from collections import Counter
from typing import Any, Self

from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.protocol.cybin import ProtocolError
from thriftpy2.protocol.exc import TProtocolException
from thriftpy2.thrift import TApplicationException, TClient, TException, TMessageType, TType
from thriftpy2.transport import TCyFramedTransport, TCyMemoryBuffer, TSocket, TTransportException

from servicekit.addresses import Address, AddressBook, Resolver, parse_servers, resolve_both_families
from servicekit.base import base_module
from servicekit.binary_protocol import UNSUPPORTED_CLIENT_TYPE, VERSION_1
from servicekit.settings import DEFAULT_MAX_MESSAGE_BYTES
from servicekit.wire import element_type, field_type

# The longest pause between retries: a server restarting is noticed within it.
MAX_PAUSE_SECONDS = 1.0
INTEGER_BITS = {TType.BYTE: 8, TType.I16: 16, TType.I32: 32, TType.I64: 64}
PLAIN_TYPES = {
    TType.BOOL: bool,
    TType.DOUBLE: (int, float),
    TType.STRING: str,
    TType.BINARY: bytes,
    TType.LIST: (list, tuple),
    TType.SET: (set, frozenset, list, tuple),
    TType.MAP: dict,
}


class ServerUnreachable(Exception):
    """No server could be reached, or none replied within the timeout.

    `sent`: whether the request may have reached a server; False only when
    no attempt sent it whole (every connection refused, say, or every write failed).
    `cut_short`: the caller's deadline, not the server, ended the attempt.
    """

    def __init__(self, message: str, sent: bool = True, cut_short: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.cut_short = cut_short


class UnexpectedReply(ServerUnreachable):
    """A server answered with bytes that are no reply of this service (another service's, or not Thrift):
    a retry cannot mend it, so it is raised once each address was tried. `sent` is False when no attempt
    wrote the request whole (the server reset the connection while it was written).

    `refused_by`: the addresses that answered so.
    """

    def __init__(self, message: str, refused_by: set[Address], sent: bool = True) -> None:
        super().__init__(message, sent=sent)
        self.refused_by = refused_by


class TLSRefused(ServerUnreachable):
    """Every server refused the TLS handshake, or this client's certificate, or plain text (a server on
    the kit says "this server accepts TLS only"): a certificate, CA or host name that is wrong now, or
    TLS missing, is wrong on a retry too, so it is raised once each was tried.

    `refused_by`: the addresses that refused.
    """

    def __init__(self, message: str, refused_by: set[Address]) -> None:
        super().__init__(message, sent=False)
        self.refused_by = refused_by


# What OpenSSL names a refusal of the certificates or of TLS itself (not a connection closed or corrupted).
TLS_REFUSALS = re.compile(r"CERTIFICATE|UNKNOWN_CA|HANDSHAKE_FAILURE|PROTOCOL_VERSION|WRONG_VERSION_NUMBER")


# What decoding a reply raises when its bytes are no reply of the service: thriftpy2's Cython decoder's
# errors, a MemoryError for a frame of gigabytes declared, a SystemError for a negative length.
UNDECODABLE = (ProtocolError, TProtocolException, UnicodeDecodeError, MemoryError, SystemError)
REPLY_VERSION = (VERSION_1 >> 16).to_bytes(2, "big")  # a framed binary message's bytes 4 and 5
REPLY_HEAD_BYTES = 6  # what _ReplySocket judges a reply by: its frame's length and the version
SHOWN_REPLY_BYTES = 12  # of a reply refused, quoted in the error
MAX_REPLY_BYTES = 256 * 1024 * 1024  # a longer reply is no RPC's: text read as a length ("-ERR", "<htm"), say
# Errors a server on the kit may close the connection after (a call too long, a TLS port called in plain text).
CLOSING_ERRORS = (UNSUPPORTED_CLIENT_TYPE, TApplicationException.PROTOCOL_ERROR)


def _tls_refusal(error: BaseException) -> bool:
    """A TLS error that a retry with the same settings cannot mend."""
    return isinstance(error, ssl.SSLError) and bool(TLS_REFUSALS.search(str(error.reason)))


class RequestTooLarge(ValueError):
    """A request longer than the server accepts: refused before a byte is sent, never retried."""


def new_request_id() -> str:
    """A fresh request id; reuse it to retry the same write safely."""
    return uuid.uuid4().hex


class _ReplySocket(TSocket):
    """A socket that checks what a reply starts with before the framed transport trusts its length.

    A server of something else (HTTP, say) answers with bytes that declare a frame of a gigabyte: the
    transport would allocate it and wait for it until the deadline, retrying. Its first bytes, however the
    reads split them, must be a plausible length and the binary protocol's version.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock=sock)
        self._head: bytes | None = None  # a reply's first bytes, until they are judged
        self._attempt_ends = 0.0  # time.monotonic()
        self.unsent: OSError | None = None  # why the last request could not be written whole

    def start_attempt(self, timeout: float) -> None:
        """Bound the next request and its whole reply by `timeout` seconds: not each read, which a reply
        that trickles in a byte at a time would restart."""
        self._attempt_ends = time.monotonic() + timeout
        self.sock.settimeout(timeout)  # sendall's whole send, since Python 3.5

    def write(self, buff: bytes) -> None:
        """Send a request; if it cannot all be sent, no server has it whole (`unsent` says why), and the
        reply read is only one the server sent before it refused the request (see _already_there)."""
        self._head = b""
        self.unsent = None
        try:
            super().write(buff)
        except OSError as error:
            self.unsent = error

    def read(self, sz: int) -> bytes:
        data = self._already_there(sz) if self.unsent else self._within_attempt(sz)
        if self._head is not None:
            self._head += data[: SHOWN_REPLY_BYTES - len(self._head)]
            self._judge(self._head)
        return data

    def _within_attempt(self, sz: int) -> bytes:
        left = self._attempt_ends - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self.sock.settimeout(left)
        return super().read(sz)

    def _already_there(self, sz: int) -> bytes:
        """What the server sent before the write failed, never waited for; else the write's error.

        A server that refuses a request it has not read all of (too long, plain text to a TLS port, a client
        certificate refused) says why, then closes: the kernel resets the connection, which fails the write,
        while the reply saying why waits unread.
        """
        self.sock.settimeout(0)
        try:
            return super().read(sz)
        except (BlockingIOError, ssl.SSLWantReadError, ConnectionError, TTransportException):
            raise self.unsent from None

    def _judge(self, head: bytes) -> None:
        implausible = len(head) >= 4 and not 0 < int.from_bytes(head[:4], "big", signed=True) <= MAX_REPLY_BYTES
        if implausible or (len(head) >= 6 and head[4:6] != REPLY_VERSION):
            starts = f"a reply that starts {head!r}, not framed binary Thrift"
            raise TProtocolException(TProtocolException.BAD_VERSION, starts)
        if len(head) >= REPLY_HEAD_BYTES:
            self._head = None


class _Connection:
    """One open connection to one server, used by one call at a time."""

    def __init__(
        self,
        service: type,
        address: Address,
        connect_timeout: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.address = address
        sock = socket.create_connection((address.ip, address.port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = tls.wrap_socket(sock, server_hostname=address.host)
        except BaseException:
            sock.close()
            raise
        self.socket = _ReplySocket(sock)  # each call sets its timeout (start_attempt)
        self.thrift = TClient(service, TCyBinaryProtocol(TCyFramedTransport(self.socket)))
        self.idle_since = time.monotonic()

    def closed_by_server(self) -> bool:
        """An idle connection that is readable was closed by the server (idle
        timeout, restart) or holds bytes nobody asked for: unusable either way."""
        sock = self.socket.sock
        # A non-blocking read (select() fails on descriptors >= 1024, and TLS
        # sockets cannot peek); if it returns anything the connection is discarded.
        # The call that uses it next sets its own timeout (start_attempt).
        sock.settimeout(0)
        try:
            sock.recv(1)
            return True  # end of file, or stray bytes
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.thrift.close()

    def abandon(self) -> None:
        """In a forked child: close this process's descriptor, never the connection, which the parent
        still uses. Neither thriftpy2's close (its shutdown() ends the connection for both processes) nor
        a TLS unwrap (its close_notify would end the parent's session): SSLSocket.close frees the TLS
        state without a byte sent."""
        sock, self.socket.sock = self.socket.sock, None  # a close() after this does nothing
        with contextlib.suppress(OSError):  # the descriptor is this process's to lose: nothing to tell
            sock.close()


class PooledClient:
    """A thread-safe, pooled, retrying client of `service` (a thriftpy2 service class).

    servers: "host:port" or "host:port,[::1]:port,..."; a name stands for
        every address `resolve` gives it (one per pod behind a Kubernetes
        headless Service) of the family it gives first, and of the other
        family too while every address of the first is down (a dual-stack
        Service gives each pod one of each: one pod, not two servers).
        Connections are spread over the addresses (to the one with fewest
        first, in turn when even); one that refuses connections, or on which
        a call timed out, is skipped for a while.
    resolve / resolve_every: host name -> IP addresses (default: the
        system's resolver), asked again every `resolve_every` seconds and
        soon after a connection fails; a call finding the addresses two
        intervals old (the client was idle) waits up to a second for the
        answer rather than try gone addresses first. New
        addresses get connections as the pool evens out; connections to
        addresses that are gone close, idle ones at once, busy ones when
        their call returns. IP addresses are used as they are.
    deadline: seconds a call may take in all, retries included
        (float("inf"): no limit). Connection failures, timeouts and
        base.thrift's Unavailable are retried with the same arguments (so
        a write's request_id: applied once), pausing 50 ms doubling up to
        1 s with jitter, until the deadline, or `retries` times if it is
        given. Other service errors are raised at once, and so are
        TLSRefused and UnexpectedReply once every address answered so.
    timeout / connect_timeout: seconds per attempt / per connection attempt
        (never past the deadline; an attempt that another may follow on an
        address that is up takes at most half the time left).
    pool_size: most connections open at once; an attempt waits up to
        `acquire_timeout` seconds for a free one (then fails, and is retried
        as a connection failure is).
    max_idle: seconds an unused connection is kept before it is replaced.
    tls: an ssl.SSLContext (see servicekit.tls.tls_context()) to call a TLS server.
    max_message_bytes: the server's THRIFT_MAX_MESSAGE_BYTES (its default
        unless given; None checks nothing): a longer request raises
        RequestTooLarge before anything is sent (the server would refuse it
        with a PROTOCOL_ERROR, having read it or not). Checking encodes each
        request once more.

    Arguments are checked against the IDL before a byte is sent, values
    nested in structs and containers too: an i64 must be an int (not a bool,
    not a float) within range, a string a str.
    Any transport error or timeout discards that connection: the reply of a
    timed-out call may still arrive and must never be read by the next call.

    A client made before os.fork() (gunicorn --preload, a module-level
    client, multiprocessing's fork start method) serves both processes:
    the child abandons every connection it inherited (closing its copy of
    the descriptor only: the parent's calls go on undisturbed), starts
    with locks of its own (a thread of the parent may have held one) and
    opens connections of its own on its next call; a resolution the parent
    was running is started again in the child.
    """

    def __init__(
        self,
        service: type,
        servers: str,
        *,
        deadline: float = 30.0,
        retries: int | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        pool_size: int = 8,
        acquire_timeout: float = 10.0,
        max_idle: float = 300.0,
        tls: ssl.SSLContext | None = None,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        resolve: Resolver = resolve_both_families,
        resolve_every: float = 30.0,
    ) -> None:
        _check_options(deadline, retries, timeout, connect_timeout, pool_size, acquire_timeout, max_idle, resolve_every)
        self.service = service
        self._unavailable = base_module(service).Unavailable
        self.deadline = deadline
        self.retries = retries
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.acquire_timeout = acquire_timeout
        self.max_idle = max_idle
        self.tls = tls
        self.max_message_bytes = max_message_bytes
        self._argument_specs = {
            method: list(getattr(service, method + "_args").thrift_spec.values())  # in declared order, as args are
            for method in service.thrift_services
        }
        self._addresses = AddressBook(parse_servers(servers), resolve, resolve_every, self._retire_idle)
        self._idle: list[_Connection] = []
        self._connections: set[_Connection] = set()  # open, idle or busy: what a forked child abandons
        self._open = 0  # connections open or being opened
        self._open_to: Counter[Address] = Counter()
        self._closed = False
        self._available = threading.Condition()
        self._turn = random.randrange(1 << 16)  # where the round starts: one-shot clients spread too
        _LIVE_CLIENTS.add(self)  # last: a child forked meanwhile finds it whole

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection now and each busy one when its call ends. A call made after this raises
        RuntimeError; one waiting meanwhile for a connection or a retry ends with ServerUnreachable."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            for connection in idle:
                self._forget(connection)
            self._available.notify_all()

    def _start_afresh_after_fork(self) -> None:
        """In a forked child, its one thread: the parent's connections, idle or busy in its other threads,
        are abandoned, and the locks replaced (one may have been held at the fork, by a thread the child
        lacks). The child's next call opens a connection of its own."""
        self._available = threading.Condition()
        self._addresses.after_fork()
        inherited, self._connections = self._connections, set()
        self._idle, self._open, self._open_to = [], 0, Counter()
        for connection in inherited:
            connection.abandon()

    def ping(self) -> str:
        """Returns "pong" when the server answers."""
        return self.call("ping")

    def health(self) -> Any:  # the service's own base.Health class (base.py)
        """base.Health: whether the server is serving (not draining) and its database answers."""
        return self.call("health")

    def call(self, method: str, *args: object) -> Any:  # what `method` returns, of the service's IDL
        """Call `method` with `args`, retrying what is safe to retry; see the class docstring."""
        if self._closed:  # a call after close(): a mistake in the caller, not an outage to retry or report as one
            raise RuntimeError("the client is closed")
        if method not in self._argument_specs:
            raise ValueError(f"{self.service.__name__} has no method {method!r}")
        check_arguments(method, self._argument_specs[method], args)
        if self.max_message_bytes is not None:
            self._check_size(method, args)
        # A deadline of float("inf") is none; sockets and locks refuse to wait past threading.TIMEOUT_MAX (292 years).
        give_up_at = time.monotonic() + min(self.deadline, threading.TIMEOUT_MAX)
        sent, refused_by, answer = False, set(), None
        refusals: dict[str, None] = {}  # each address's refusal, in order, once: the error names them all
        for attempt in itertools.count():
            try:
                return self._call_once(method, args, give_up_at, self.retries is None or attempt < self.retries)
            except (ServerUnreachable, self._unavailable) as error:
                sent = sent or getattr(error, "sent", True)  # a server's Unavailable: it had the request
                if refused := getattr(error, "refused_by", None):
                    refused_by |= refused
                    refusals[str(error)] = None
                if not isinstance(error, ServerUnreachable):
                    answer = error
                pause = min(MAX_PAUSE_SECONDS, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                last = attempt == self.retries or self._closed or self._all_refused(refused_by)
                if last or time.monotonic() + pause >= give_up_at:
                    if getattr(error, "cut_short", False) and answer is not None:
                        raise answer from None  # what a server said, not that the deadline ended the last try
                    if isinstance(error, ServerUnreachable):
                        error.sent = sent
                        if refused and len(refusals) > 1:
                            error.args = (", ".join(refusals),)
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _all_refused(self, refused_by: set[Address]) -> bool:
        """Whether every address has refused this client's TLS (or answered no reply of this service):
        no retry can succeed."""
        try:
            return bool(refused_by) and refused_by >= set(self._addresses.current(0))
        except OSError:
            return True  # no address to try at all

    def _check_size(self, method: str, args: tuple) -> None:
        """RequestTooLarge if the request, encoded as it would be sent, is over max_message_bytes."""
        names = [spec[1] for spec in self._argument_specs[method]]
        buffer = TCyMemoryBuffer()
        protocol = TCyBinaryProtocol(buffer)
        protocol.write_message_begin(method, TMessageType.CALL, 0)
        protocol.write_struct(getattr(self.service, method + "_args")(**dict(zip(names, args, strict=True))))
        protocol.write_message_end()
        if (size := len(buffer.getvalue())) > self.max_message_bytes:
            raise RequestTooLarge(
                f"the request is {size} bytes, over the server's limit of {self.max_message_bytes} "
                "(THRIFT_MAX_MESSAGE_BYTES)"
            )

    def _acquire(self, give_up_at: float) -> _Connection:
        try:
            self._addresses.current(give_up_at - time.monotonic())  # waits for a resolution if need be
        except OSError as error:
            raise ServerUnreachable(str(error), sent=False) from None
        wait_until = min(give_up_at, time.monotonic() + self.acquire_timeout)  # for a free connection only
        with self._available:
            while True:
                if self._closed:  # by another thread, during this call: it ends as a failed attempt does
                    raise ServerUnreachable("the client was closed during the call", sent=False)
                if self._idle:
                    connection = self._idle.pop()  # most recently used: least likely to be stale
                    if self._usable(connection):
                        return connection
                    self._forget(connection)
                    continue
                if self._open < self.pool_size:
                    self._open += 1
                    break
                if not self._available.wait(wait_until - time.monotonic()):
                    raise ServerUnreachable(f"all {self.pool_size} connections stayed busy", sent=False)
        try:
            return self._connect(give_up_at)
        except BaseException:
            with self._available:
                self._open -= 1
                self._available.notify()
            raise

    def _usable(self, connection: _Connection) -> bool:
        """An idle connection is used again unless it idled too long, its address is gone (resolved
        just now: the resolving thread has not yet retired it), the server closed it, or a call to its
        address timed out since (the server may be hung) and there are other addresses."""
        now = time.monotonic()
        address = connection.address
        return (
            now - connection.idle_since < self.max_idle
            and self._addresses.is_current(address)
            and (self._addresses.down_until(address) <= now or self._addresses.is_only(address))
            and not connection.closed_by_server()
        )

    def _release(self, connection: _Connection) -> None:
        """Back to the pool after a whole reply; closed instead if its place is gone or the pool is uneven."""
        with self._available:
            if self._closed or not self._worth_keeping(connection.address):
                self._forget(connection)
            else:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            self._available.notify()

    def _discard(self, connection: _Connection) -> None:
        """Out of the pool: the connection failed or may be out of step."""
        with self._available:
            self._forget(connection)
            self._available.notify()

    def _forget(self, connection: _Connection) -> None:
        """Close a connection the pool counted; the caller holds the lock."""
        self._connections.discard(connection)
        self._open -= 1
        self._uncount(connection.address)
        connection.close()

    def _uncount(self, address: Address) -> None:
        self._open_to[address] -= 1
        if not self._open_to[address]:
            del self._open_to[address]

    def _worth_keeping(self, address: Address) -> bool:
        """Whether a connection to `address` stays: its address is current, and it holds
        at most one more connection than the emptiest address that is up (a new or
        restarted server fills up as busier ones give connections back)."""
        if not self._addresses.is_current(address):
            return False
        return self._open_to[address] - min((self._open_to[up] for up in self._addresses.up()), default=0) < 2

    def _retire_idle(self, current: frozenset[Address]) -> None:
        """The addresses changed: close idle connections to those that are gone (busy ones close on release)."""
        with self._available:
            gone = [connection for connection in self._idle if connection.address not in current]
            self._idle = [connection for connection in self._idle if connection.address in current]
            for connection in gone:
                self._forget(connection)
            self._available.notify_all()

    def _claim(self, addresses: list[Address], tried: set[Address]) -> Address | None:
        """The address for the next connection, counted as taken: up ones first, then
        the fewest connections, ties in turn (round-robin); None when all were tried."""
        with self._available:
            now = time.monotonic()
            self._turn += 1
            start = self._turn % len(addresses)
            untried = [address for address in addresses[start:] + addresses[:start] if address not in tried]
            if not untried:
                return None
            # Down ones last, soonest to recover first: rather tried than a call failed untried.
            address = min(untried, key=lambda a: (max(self._addresses.down_until(a), now), self._open_to[a]))
            self._open_to[address] += 1
            return address

    def _connect(self, give_up_at: float) -> _Connection:
        """Open a connection to the best address that accepts one, trying each at most once. The addresses are
        asked for again after each failure: once every address of a name's first family is down, its other
        family's are tried too."""
        errors, tried, refused_by = [], set(), set()
        while address := self._claim(self._addresses.active(), tried):
            tried.add(address)
            connect_timeout = min(self.connect_timeout, give_up_at - time.monotonic())
            try:
                connection = self._open_connection(address, connect_timeout)
            except (TTransportException, OSError) as error:
                errors.append(f"{address} ({reason(error)})")
                if _tls_refusal(error):
                    refused_by.add(address)
                if connect_timeout <= 0:
                    break
                self._addresses.mark_down(address)
                continue
            return connection  # marked up once a call on it returns: a hung server accepts connections
        if refused_by:
            raise TLSRefused(", ".join(errors), refused_by)
        raise ServerUnreachable(", ".join(errors), sent=False)

    def _open_connection(self, address: Address, connect_timeout: float) -> _Connection:
        """A connection to a claimed address; the claim is given back if it fails."""
        try:
            if connect_timeout <= 0:
                raise TimeoutError("no time left before the deadline")
            connection = _Connection(self.service, address, connect_timeout, self.tls)
        except BaseException:
            with self._available:
                self._uncount(address)
            raise
        with self._available:
            self._connections.add(connection)
        return connection

    def _call_once(self, method: str, args: tuple, give_up_at: float, may_retry: bool):
        connection = self._acquire(give_up_at)
        left = give_up_at - time.monotonic()
        # A server that hangs may not take all the time left while a retry could go to another address
        # (client.py's --timeout is both its timeout and its deadline).
        retry_elsewhere = (
            may_retry
            and not self._addresses.is_only(connection.address)  # one address, the most common: nothing to look up
            and any(a != connection.address for a in self._addresses.up())
        )
        timeout = min(self.timeout, left / 2 if retry_elsewhere else left)
        try:
            connection.socket.start_attempt(max(0.001, timeout))
            result = getattr(connection.thrift, method)(*args)
        except TimeoutError as error:
            self._discard(connection)
            # It may hang, its other connections with it; unless the caller's deadline, not the server, cut the
            # attempt short (less than half the timeout was left).
            cut_short = timeout < self.timeout / 2
            if not cut_short:
                self._addresses.mark_down(connection.address)
            failure, sent = f"{connection.address} ({reason(error)})", connection.socket.unsent is None
            raise ServerUnreachable(failure, sent=sent, cut_short=cut_short) from None
        except (TTransportException, OSError, *UNDECODABLE) as error:
            raise self._failed(connection, error) from None
        except TException as error:
            if isinstance(error, TApplicationException) and error.type in CLOSING_ERRORS:
                raise self._failed(connection, error) from None
            self._addresses.mark_up(connection.address)  # before release, which weighs the addresses up
            self._release(connection)  # a whole error reply was read: still in step
            raise
        except BaseException:
            self._discard(connection)  # interrupted mid-call: the reply may still come
            raise
        self._addresses.mark_up(connection.address)
        self._release(connection)
        return result

    def _failed(self, connection: _Connection, error: Exception) -> ServerUnreachable | TApplicationException:
        """Discard `connection` after `error`: what the call raises (the error itself if the server told why)."""
        self._discard(connection)
        failure = f"{connection.address} ({reason(error)})"
        if isinstance(error, TApplicationException) and error.type == UNSUPPORTED_CLIENT_TYPE:
            self._addresses.mark_down(connection.address)  # a TLS server answered this plain-text call
            return TLSRefused(failure, {connection.address})
        if isinstance(error, TApplicationException):
            return error  # the server said why (and may close the connection)
        if _tls_refusal(error):  # TLS 1.3 refuses a client certificate after the handshake, at the first read
            self._addresses.mark_down(connection.address)
            return TLSRefused(failure, {connection.address})
        if isinstance(error, UNDECODABLE):
            self._addresses.mark_down(connection.address)
            decoding = f"{connection.address} ({type(error).__name__}: {reason(error)})"
            return UnexpectedReply(decoding, {connection.address}, sent=connection.socket.unsent is None)
        self._addresses.resolve_soon()
        return ServerUnreachable(failure, sent=connection.socket.unsent is None)


# Every client not garbage-collected yet, held weakly: a forked child starts each afresh.
_LIVE_CLIENTS: weakref.WeakSet[PooledClient] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_LIVE_CLIENTS):
        client._start_afresh_after_fork()


# Run by os.fork() and by whatever calls PyOS_AfterFork_Child (multiprocessing, gunicorn, celery's billiard;
# uWSGI only with py-call-osafterfork): nothing to check on each call.
os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_options(
    deadline: float,
    retries: int | None,
    timeout: float,
    connect_timeout: float,
    pool_size: int,
    acquire_timeout: float,
    max_idle: float,
    resolve_every: float,
) -> None:
    """ValueError naming the first of PooledClient's options out of its range: most would make every call
    wait out its deadline, or retry forever (resolve_every=nan: never resolve again)."""
    for name, value in {"deadline": deadline, "timeout": timeout, "connect_timeout": connect_timeout}.items():
        if not value > 0:
            raise ValueError(f"{name} must be more than 0 seconds, not {value!r}")
    # 0: no waiting, no reuse, resolved before every call.
    for name, value in {
        "acquire_timeout": acquire_timeout,
        "max_idle": max_idle,
        "resolve_every": resolve_every,
    }.items():
        if not value >= 0:
            raise ValueError(f"{name} must be 0 seconds or more, not {value!r}")
    if not (isinstance(pool_size, int) and pool_size >= 1):
        raise ValueError(f"pool_size must be 1 or more, not {pool_size!r}")
    if retries is not None and not (isinstance(retries, int) and retries >= 0):
        raise ValueError(f"retries must be 0 or more (None: until the deadline), not {retries!r}")


def check_arguments(method: str, specs: list[tuple], args: tuple) -> None:
    """TypeError or ValueError unless `args` fit the IDL, nested values too: thriftpy2 would send 5.5 as 5
    and True as 1, and a server refuses a string that is not UTF-8."""
    if len(args) != len(specs):
        raise TypeError(f"{method}() takes {len(specs)} arguments, not {len(args)}")
    for spec, value in zip(specs, args, strict=True):
        check_value(f"{method}() argument {spec[1]}", *field_type(spec), value)


def check_value(what: str, kind: int, held: object, value: object) -> None:
    """TypeError or ValueError unless `value` fits Thrift type `kind` (`held`: a struct's class, or a
    container's element types); `what` names it in the message."""
    if kind in INTEGER_BITS:
        if type(value) is not int and not isinstance(value, enum.IntEnum):
            raise TypeError(f"{what} must be an int, not {type(value).__name__}")
        limit = 2 ** (INTEGER_BITS[kind] - 1)
        if not -limit <= value < limit:
            raise ValueError(f"{what} = {value} is outside the {INTEGER_BITS[kind]}-bit range")
    elif kind == TType.STRUCT:
        if not isinstance(value, held):
            raise TypeError(f"{what} must be a {held.__name__}, not {type(value).__name__}")
        for spec in held.thrift_spec.values():
            if (field := getattr(value, spec[1])) is not None:  # an unset field is not sent
                check_value(f"{what}.{spec[1]}", *field_type(spec), field)
    elif kind == TType.STRING and isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:  # as thriftpy2 hands over a reply's string that is not UTF-8
            raise ValueError(f"{what} is not valid UTF-8 text") from None
        raise TypeError(f"{what} has the wrong type: bytes")
    # To Python a bool is an int: only a bool argument takes one.
    elif not isinstance(value, PLAIN_TYPES[kind]) or isinstance(value, bool) != (kind == TType.BOOL):
        raise TypeError(f"{what} has the wrong type: {type(value).__name__}")
    elif kind == TType.STRING:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{what} is not valid UTF-8 text") from None
    elif kind in (TType.LIST, TType.SET):
        for item in value:
            check_value(f"{what}[...]", *element_type(held), item)
    elif kind == TType.MAP:
        for key, item in value.items():
            check_value(f"{what} key", *element_type(held[0]), key)
            check_value(f"{what}[{key!r}]", *element_type(held[1]), item)


def reason(error: BaseException) -> str:
    """An exception's message for one line of output."""
    return getattr(error, "message", None) or str(error) or type(error).__name__
