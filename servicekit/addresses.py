"""Where a PooledClient's connections can go: every address behind its servers, kept current.

A server given by name stands for every address it resolves to (one per ready pod behind a Kubernetes headless
Service), of one family: a dual-stack Service gives each pod an IPv4 and an IPv6 address, and the pool must count
it once. The client (client.py) asks AddressBook for them before each call and spreads its pool over them.
parse_servers() reads servers as written (host:port,[::1]:port), for the client and the probe alike.
"""

import ipaddress
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

# A host name -> its IP addresses. A name that cannot be resolved raises OSError.
Resolver = Callable[[str], Sequence[str]]
# How long an address a connection failed to is skipped (doubling per failure, capped).
DOWN_FOR_SECONDS, DOWN_AT_MOST_SECONDS = 1.0, 30.0
# After a connection failure, names are resolved again, but not more often than this.
RESOLVE_AT_MOST_EVERY_SECONDS = 1.0
# How long a call waits for a resolution of stale addresses before it uses them: a client idle while every pod
# was replaced would otherwise try each gone one first (a connect timeout each), and a slow or hung resolver
# holds calls no longer than this. Stale: resolved over two intervals ago, so only a client idle for a while
# waits; a busy one resolves in the background, its calls never held up by a slow DNS answer.
RESOLVE_WAIT_SECONDS = 1.0
HOST_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}")  # of a host name, once IDNA-encoded; IPv4 addresses too


def called_at(bind_host: str) -> str:
    """Where a client on the server's machine calls a server that binds `bind_host`: 127.0.0.1 for every address."""
    return "127.0.0.1" if bind_host in ("", "0.0.0.0", "::") else bind_host


def host_port(host: str, port: int) -> str:
    """`host:port` as servers are written: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_servers(servers: str) -> list[tuple[str, int]]:
    """'host:port,[::1]:port' -> [(host, port), ...]; raises ValueError if malformed."""
    addresses = []
    for item in (part.strip() for part in servers.split(",")):
        if not item:
            raise ValueError(f"an empty address in {servers!r}: write host:port[,host:port...]")
        if any(character.isspace() for character in item):  # most often servers separated by spaces
            raise ValueError(f"a space in an address (servers are separated by commas, as a:9090,b:9090): {item!r}")
        if "/" in item:
            raise ValueError(f"not host:port (no scheme or path), as localhost:9090: {item!r}")
        if ":" not in item:
            raise ValueError(f"no port: write host:port, as localhost:9090: {item!r}")
        if item.startswith("[") and item.endswith("]"):  # an IPv6 address: its colons are no port's
            raise ValueError(f"no port: write [address]:port, as [::1]:9090: {item!r}")
        host, _, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
            _check_ipv6(host, item)
        elif ":" in host:
            raise ValueError(f"write an IPv6 address in brackets, as [::1]:9090: {item!r}")
        else:
            _check_host_name(host, item)
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"not host:port with a port from 1 to 65535: {item!r}")
        addresses.append((host, int(port)))
    return addresses


def _check_ipv6(host: str, item: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"not an IPv6 address between the brackets: {item!r}") from None


def _check_host_name(host: str, item: str) -> None:
    """A host name (IDNA: letters of any script) or an IPv4 address; ValueError for anything else."""
    try:
        labels = host.encode("idna").decode("ascii").removesuffix(".").split(".")
    except UnicodeError:  # not text, or a label over 63 characters
        labels = [""]
    if len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a host name or IP address before the port: {item!r}")


class Address(NamedTuple):
    """One place to connect: the server's host as given (TLS checks its certificate for it), an IP, a port."""

    host: str
    ip: str
    port: int

    def __str__(self) -> str:
        ip_port = host_port(self.ip, self.port)
        return ip_port if self.host == self.ip else f"{self.host}/{ip_port}"


def resolve_both_families(host: str) -> list[str]:
    """Every IPv4 and IPv6 address of `host`, in the system resolver's order, each once."""
    found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(sockaddr[0] for *_, sockaddr in found))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class AddressBook:
    """The addresses behind `servers` ([(host, port)]), names resolved again every `resolve_every` seconds.

    A name that resolves to both families stands for the addresses of the
    family the resolver gave first (RFC 6724's choice, as getaddrinfo orders
    them), and for those of the other too while every one of the first is
    down: one family may be unreachable from here.

    Names are resolved again in a background thread when due; a call waits for
    the answer only when the addresses are stale (a second at most once an
    address is known). An address a connection or a call timed out on is
    marked down until a call to it returns. changed(addresses) is called,
    from the resolving thread, when a resolution changes them. A name that
    fails to resolve, or resolves to nothing, keeps its previous addresses:
    a DNS hiccup retires nothing.
    """

    def __init__(
        self,
        servers: list[tuple[str, int]],
        resolve: Resolver,
        resolve_every: float,
        changed: Callable[[frozenset[Address]], None],
    ) -> None:
        self._servers = servers
        self._names = [(host, port) for host, port in servers if not _is_ip(host)]
        self._resolve = resolve
        self._resolve_every = resolve_every
        self._changed = changed
        self._lock = threading.Lock()
        # Each server's addresses by family, the family the resolver gave first leading.
        self._found = {(host, port): [[Address(host, host, port)]] for host, port in servers if _is_ip(host)}
        self._addresses, self._one_family = self._collect()
        self._resolved_at = self._due_at = float("-inf")
        self._resolving = False
        self._resolving_since = float("-inf")
        self._resolved = threading.Event()  # set while no resolution runs
        self._resolved.set()
        self._errors: list[str] = []  # of the last resolution, one line per name that failed
        self._down_until: dict[Address, float] = {}
        self._down_for: dict[Address, float] = {}

    def current(self, timeout: float) -> list[Address]:
        """Every address now. Names are resolved again in a background thread when due, and the
        answer waited for if the addresses are stale: up to `timeout` seconds while no address is
        known (a resolver that never answers holds no caller past its deadline; OSError if none
        came), else up to RESOLVE_WAIT_SECONDS after the resolution began (then the addresses known
        are used)."""
        with self._lock:
            now = time.monotonic()
            known = bool(self._addresses)
            due = bool(self._names) and (not known or now >= self._due_at)
            if due and not self._resolving:
                self._resolving, self._resolving_since = True, now
                self._resolved.clear()
                threading.Thread(target=self._resolve_names, name="resolver", daemon=True).start()
            stale = due and (not known or now >= self._resolved_at + 2 * self._resolve_every)
            wait = min(timeout, self._resolving_since + RESOLVE_WAIT_SECONDS - now) if known else timeout
        if stale and not self._resolved.wait(max(0.0, wait)) and not known:
            names = ", ".join(host_port(host, port) for host, port in self._names)
            raise OSError(f"{names} (no answer from the resolver within {timeout:.3g} s)")
        if not self._addresses:
            raise OSError(", ".join(self._errors))
        return self.active()

    def after_fork(self) -> None:
        """In a forked child: a lock and an event of its own (a thread of the parent may have held the lock, and
        the child lacks the parent's resolving thread, which would set the event); a resolution that thread was
        running is started again on the child's next call, not waited for."""
        self._lock = threading.Lock()
        self._resolved = threading.Event()
        self._resolved.set()
        if self._resolving:
            self._resolving = False
            self._due_at = float("-inf")

    def active(self) -> list[Address]:
        """The addresses calls go to now, without waiting: of each server, its first family's, and the next
        family's too while every address of the first is down."""
        if self._one_family:  # each server's addresses are of one family (the common case): all of them
            return self._addresses
        now = time.monotonic()
        active = []
        for server in self._servers:
            for family in self._found.get(server, ()):
                active += family
                if any(self.down_until(address) <= now for address in family):
                    break
        return list(dict.fromkeys(active))

    def is_only(self, address: Address) -> bool:
        """Whether `address` is the one address calls go to."""
        return self.active() == [address]

    def is_current(self, address: Address) -> bool:
        return address in self.active()

    def up(self) -> list[Address]:
        """The addresses calls go to that no connection has failed to lately."""
        now = time.monotonic()
        return [address for address in self.active() if self.down_until(address) <= now]

    def resolve_soon(self) -> None:
        """After a connection failure: the addresses may have changed (a pod replaced)."""
        with self._lock:
            self._due_at = min(self._due_at, self._resolved_at + RESOLVE_AT_MOST_EVERY_SECONDS)

    def mark_down(self, address: Address) -> None:
        """A connection to `address` failed: skip it for a while, longer each time it fails again."""
        with self._lock:
            down_for = min(self._down_for.get(address, DOWN_FOR_SECONDS / 2) * 2, DOWN_AT_MOST_SECONDS)
            self._down_for[address] = down_for
            self._down_until[address] = time.monotonic() + down_for
        self.resolve_soon()

    def mark_up(self, address: Address) -> None:
        """A call to `address` returned: forget its failures."""
        if address not in self._down_for:  # most calls: no lock
            return
        with self._lock:
            self._down_for.pop(address, None)
            self._down_until.pop(address, None)

    def down_until(self, address: Address) -> float:
        """When `address` may be tried again: in the past unless a connection to it failed lately."""
        return self._down_until.get(address, float("-inf"))

    def _collect(self) -> tuple[list[Address], bool]:
        """Every address known, of either family; and whether each server's are of one family."""
        found = (address for server in self._servers for family in self._found.get(server, ()) for address in family)
        return list(dict.fromkeys(found)), all(len(families) < 2 for families in self._found.values())

    def _resolve_names(self) -> None:
        """Resolve every name, keep what did not resolve, report a change; the resolving thread."""
        results = {server: self._resolve_one(*server) for server in self._names}
        with self._lock:
            before = self._addresses
            self._found.update((server, found) for server, (found, _) in results.items() if found)
            after, self._one_family = self._collect()
            self._addresses = after
            for marks in (self._down_until, self._down_for):  # of addresses gone for good, say old pods'
                for address in set(marks) - set(after):
                    del marks[address]
            self._resolved_at = time.monotonic()
            self._due_at = self._resolved_at + self._resolve_every
            self._errors = [error for _, error in results.values() if error]
            self._resolving = False
            self._resolved.set()
        if set(after) != set(before):
            self._changed(frozenset(after))

    def _resolve_one(self, host: str, port: int) -> tuple[list[list[Address]], str]:
        try:
            ips = self._resolve(host)
        except Exception as error:  # noqa: BLE001 - a discovery of the caller's may raise anything, and the
            # resolving thread must end by setting _resolved (OSError, or UnicodeError for a label over 63 characters)
            return [], f"{host}:{port} (cannot resolve: {error or type(error).__name__})"
        if not ips:
            return [], f"{host}:{port} (resolves to no address)"
        families: dict[bool, list[Address]] = {}  # IPv6 or not, in the resolver's order
        for ip in ips:
            families.setdefault(":" in ip, []).append(Address(host, ip, port))
        return list(families.values()), ""
