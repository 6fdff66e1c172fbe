"""PooledClient: a thread-safe, pooled, retrying, failing-over client of any service on the kit.

A service's typed client (its client.py) subclasses it with one method per
RPC, each a `self.call("method", ...)`. Connections speak framed binary
Thrift, optionally over TLS; calls are spread over several servers, and
connection failures, timeouts and the exceptions named safe to retry are
retried with the same arguments (so the same request_id: applied once).
"""

import enum
import itertools
import random
import socket
import ssl
import threading
import time
import uuid

from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TClient, TException, TType
from thriftpy2.transport import TCyFramedTransport, TSocket, TTransportException

from servicekit.base import base_module

# How long a server that refused a connection is skipped (doubling per failure, capped).
DOWN_FOR_SECONDS, DOWN_AT_MOST_SECONDS = 1.0, 30.0
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
    """No server could be reached, or none replied within the timeout."""


def new_request_id() -> str:
    """A fresh request id; reuse it to retry the same write safely."""
    return uuid.uuid4().hex


def parse_servers(servers: str) -> list[tuple[str, int]]:
    """'host:port,[::1]:port' -> [(host, port), ...]; raises ValueError if malformed."""
    addresses = []
    for item in (part.strip() for part in servers.split(",")):
        host, _, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        elif ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, as [::1]:9090: {item!r}")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"not host:port with a port from 1 to 65535: {item!r}")
        addresses.append((host, int(port)))
    return addresses


def tls_context(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Client TLS settings: verify the server's chain against `ca_file` and its
    host name (thriftpy2's own TSSLSocket turns hostname checking off), and
    present a client certificate if one is given."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context


class _Connection:
    """One open connection to one server, used by one call at a time."""

    def __init__(
        self,
        service: type,
        address: tuple[str, int],
        connect_timeout: float,
        timeout: float,
        tls: ssl.SSLContext | None,
    ) -> None:
        self.address = address
        sock = socket.create_connection(address, timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                sock = tls.wrap_socket(sock, server_hostname=address[0])
        except BaseException:
            sock.close()
            raise
        sock.settimeout(timeout)
        self.socket = TSocket(sock=sock)
        self.thrift = TClient(service, TCyBinaryProtocol(TCyFramedTransport(self.socket)))
        self.idle_since = time.monotonic()

    def closed_by_server(self) -> bool:
        """An idle connection that is readable was closed by the server (idle
        timeout, restart) or holds bytes nobody asked for: unusable either way."""
        sock = self.socket.sock
        timeout = sock.gettimeout()
        # A non-blocking read (select() fails on descriptors >= 1024, and TLS
        # sockets cannot peek); if it returns anything the connection is discarded.
        sock.settimeout(0)
        try:
            sock.recv(1)
            return True  # end of file, or stray bytes
        except (BlockingIOError, ssl.SSLWantReadError):
            return False
        except OSError:
            return True
        finally:
            sock.settimeout(timeout)

    def close(self) -> None:
        self.thrift.close()


class PooledClient:
    """A thread-safe, pooled, retrying client of `service` (a thriftpy2 service class).

    servers: "host:port" or "host:port,[::1]:port,..."; calls are spread over
        them, and one that refuses connections is skipped for a while.
    retry_on: exceptions safe to retry besides base.thrift's Unavailable.
    deadline: seconds a call may take in all, retries included. Connection
        failures, timeouts and `retry_on` are retried with the same arguments
        (so a write's request_id: applied once), pausing 50 ms doubling up to
        1 s with jitter, until the deadline, or `retries` times if it is
        given. Other service errors are raised at once.
    timeout / connect_timeout: seconds per attempt / per connection attempt
        (never past the deadline).
    pool_size: most connections open at once; a call waits up to
        `acquire_timeout` seconds for a free one.
    max_idle: seconds an unused connection is kept before it is replaced.
    tls: an ssl.SSLContext (see tls_context()) to call a TLS server.

    Arguments are checked against the IDL before a byte is sent: an i64 must
    be an int (not a bool, not a float) within range, a string a str.
    Any transport error or timeout discards that connection: the reply of a
    timed-out call may still arrive and must never be read by the next call.
    """

    def __init__(
        self,
        service: type,
        servers: str,
        *,
        retry_on: tuple[type[Exception], ...] = (),
        deadline: float = 30.0,
        retries: int | None = None,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        pool_size: int = 8,
        acquire_timeout: float = 10.0,
        max_idle: float = 300.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.service = service
        self.servers = parse_servers(servers)
        self.retry_on = (base_module(service).Unavailable, *retry_on)
        self.deadline = deadline
        self.retries = retries
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.acquire_timeout = acquire_timeout
        self.max_idle = max_idle
        self.tls = tls
        self._argument_specs = {
            method: [spec for _, spec in sorted(getattr(service, method + "_args").thrift_spec.items())]
            for method in service.thrift_services
        }
        self._idle: list[_Connection] = []
        self._open = 0
        self._closed = False
        self._available = threading.Condition()
        self._next_server = itertools.cycle(range(len(self.servers)))
        self._down_until: dict[tuple[str, int], float] = {}
        self._down_for: dict[tuple[str, int], float] = {}

    def __enter__(self):
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every idle connection now and each busy one when its call ends."""
        with self._available:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._available.notify_all()
        for connection in idle:
            connection.close()

    def ping(self) -> str:
        """Returns "pong" when the server answers."""
        return self.call("ping")

    def health(self):
        """base.Health: whether the server is serving (not draining) and its database answers."""
        return self.call("health")

    def call(self, method: str, *args: object):
        """Call `method` with `args`, retrying what is safe to retry; see the class docstring."""
        check_arguments(method, self._argument_specs[method], args)
        give_up_at = time.monotonic() + self.deadline
        for attempt in itertools.count():
            try:
                return self._call_once(method, args, give_up_at)
            except (ServerUnreachable, *self.retry_on):
                pause = min(MAX_PAUSE_SECONDS, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                if self._closed or attempt == self.retries or time.monotonic() + pause >= give_up_at:
                    raise
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _acquire(self, give_up_at: float) -> _Connection:
        give_up_at = min(give_up_at, time.monotonic() + self.acquire_timeout)
        with self._available:
            while True:
                if self._closed:
                    raise ServerUnreachable("the client is closed")
                if self._idle:
                    connection = self._idle.pop()  # most recently used: least likely to be stale
                    if time.monotonic() - connection.idle_since < self.max_idle and not connection.closed_by_server():
                        return connection
                    self._open -= 1
                    connection.close()
                    continue
                if self._open < self.pool_size:
                    self._open += 1
                    break
                if not self._available.wait(give_up_at - time.monotonic()):
                    raise ServerUnreachable(f"all {self.pool_size} connections stayed busy")
        try:
            return self._connect(give_up_at)
        except BaseException:
            self._release(None)
            raise

    def _release(self, connection: _Connection | None) -> None:
        """Return a healthy connection to the pool; None gives up a slot."""
        with self._available:
            if connection is not None and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                self._open -= 1
                if connection is not None:
                    connection.close()
            self._available.notify()

    def _connect(self, give_up_at: float) -> _Connection:
        """Open a connection to the next server that is up, trying each once."""
        with self._available:
            now = time.monotonic()
            start = next(self._next_server)
            order = self.servers[start:] + self.servers[:start]
            # Servers that are up first; if all are down, try them anyway,
            # soonest-to-recover first, rather than fail without trying.
            order.sort(key=lambda address: max(self._down_until.get(address, 0.0), now))
        errors = []
        for address in order:
            connect_timeout = min(self.connect_timeout, give_up_at - time.monotonic())
            if connect_timeout <= 0:
                errors.append("no time left before the deadline")
                break
            try:
                connection = _Connection(self.service, address, connect_timeout, self.timeout, self.tls)
            except (TTransportException, OSError) as error:
                with self._available:
                    down_for = min(self._down_for.get(address, DOWN_FOR_SECONDS / 2) * 2, DOWN_AT_MOST_SECONDS)
                    self._down_for[address] = down_for
                    self._down_until[address] = time.monotonic() + down_for
                errors.append(f"{address[0]}:{address[1]} ({reason(error)})")
                continue
            with self._available:
                self._down_for.pop(address, None)
                self._down_until.pop(address, None)
            return connection
        raise ServerUnreachable(", ".join(errors))

    def _call_once(self, method: str, args: tuple, give_up_at: float):
        connection = self._acquire(give_up_at)
        try:
            connection.socket.sock.settimeout(max(0.001, min(self.timeout, give_up_at - time.monotonic())))
            result = getattr(connection.thrift, method)(*args)
        except (TTransportException, OSError) as error:
            self._release(None)
            connection.close()
            address = f"{connection.address[0]}:{connection.address[1]}"
            raise ServerUnreachable(f"{address} ({reason(error)})") from None
        except TException:
            self._release(connection)  # a whole error reply was read: still in step
            raise
        except BaseException:
            self._release(None)  # interrupted mid-call: the reply may still come
            connection.close()
            raise
        self._release(connection)
        return result


def check_arguments(method: str, specs: list[tuple], args: tuple) -> None:
    """TypeError or ValueError unless `args` fit the IDL: thriftpy2 would send 5.5 as 5 and True as 1."""
    if len(args) != len(specs):
        raise TypeError(f"{method}() takes {len(specs)} arguments, not {len(args)}")
    for spec, value in zip(specs, args, strict=True):
        kind, name = spec[0], spec[1]
        if kind in INTEGER_BITS:
            if type(value) is not int and not isinstance(value, enum.IntEnum):
                raise TypeError(f"{method}() argument {name} must be an int, not {type(value).__name__}")
            limit = 2 ** (INTEGER_BITS[kind] - 1)
            if not -limit <= value < limit:
                raise ValueError(f"{method}() argument {name} = {value} is outside the {INTEGER_BITS[kind]}-bit range")
        elif kind == TType.STRUCT:
            if not isinstance(value, spec[2]):
                raise TypeError(f"{method}() argument {name} must be a {spec[2].__name__}, not {type(value).__name__}")
        # To Python a bool is an int: only a bool argument takes one.
        elif not isinstance(value, PLAIN_TYPES[kind]) or isinstance(value, bool) != (kind == TType.BOOL):
            raise TypeError(f"{method}() argument {name} has the wrong type: {type(value).__name__}")
        elif kind == TType.STRING:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{method}() argument {name} is not valid UTF-8 text") from None


def reason(error: BaseException) -> str:
    """An exception's message for one line of output."""
    return getattr(error, "message", None) or str(error) or type(error).__name__
