"""Logs and Prometheus metrics: what operators see of a running server and each request it answers.

startup.py configures logging here (LOG_FORMAT=text or json) and, with METRICS_PORT set, serves the metrics, both
named after SERVICE_NAME; the engine and db.py never import this module (startup.py hands them its callbacks).
With several server processes, PROMETHEUS_MULTIPROC_DIR must be set before this module is first imported, and the
parent, which serves the metrics, reads each live process's process_* metrics from /proc, labelled by pid.
"""

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    ProcessCollector,
    make_wsgi_app,
    multiprocess,
)

from servicekit.errors import REQUEST_ID
from servicekit.mysql import PoolHooks

REQUEST_FIELDS = ("method", "peer", "duration_ms", "outcome", "request_id")
NAMED_BY_CLIENT = ("unknown_method", "one_way_dropped")  # outcomes whose method name may be any the client sends
CLIENT_ERROR_WINDOW_SECONDS = 10.0
MAX_CLIENT_ERROR_CHARS = 300  # a client error line quotes at most this much of what the client sent
KIT_LOGGER_PREFIX = "servicekit."
logger = logging.getLogger(__name__)
FAILED_SCRAPE = {"client_error": "failed metrics requests"}
MAX_SCRAPES = 8  # connections to the metrics port at once: Prometheus, its twin, a person with curl
SCRAPE_TIMEOUT_SECONDS = 10.0  # the longest a scrape may hold its connection


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, pid, and request fields when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,  # as text lines show it: which of THRIFT_PROCESSES wrote the line
        }
        entry.update({field: getattr(record, field) for field in REQUEST_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        # ASCII: U+2028 or U+0085 from a client, written as they are, split a line for readers that honour them.
        return json.dumps(entry)


class _ServiceLoggerNames(logging.Filter):
    """Shows every logger under the service's name: `servicekit.requests` as
    `catalog.requests`, `db` as `catalog.db`, so mixed logs say whose line is whose."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self.service_name = service_name

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.service_name + "."):
            record.name = f"{self.service_name}.{record.name.removeprefix(KIT_LOGGER_PREFIX)}"
        return True


def _cut_to_size(record: logging.LogRecord) -> None:
    """Cut a client error's message to MAX_CLIENT_ERROR_CHARS, saying how long it was."""
    with suppress(Exception):  # a line that cannot be formatted is left to logging's own error report
        if len(message := record.getMessage()) > MAX_CLIENT_ERROR_CHARS:
            record.msg, record.args = f"{message[:MAX_CLIENT_ERROR_CHARS]}... ({len(message)} characters)", ()


class _BudgetedHandler(logging.StreamHandler):
    """stderr, with at most `per_window` lines of each kind of client error every CLIENT_ERROR_WINDOW_SECONDS.

    Any client can make the server log a line (a malformed message, an
    unknown method): the engine marks such a line with `extra={"client_error":
    kind}`. Past the budget, lines are counted, not written; one line sums
    each kind up when the next line is logged after the window, or when the
    process exits. Each such line is cut to MAX_CLIENT_ERROR_CHARS: it may
    quote what the client sent (a method name of 64 KiB).
    """

    def __init__(self, per_window: int) -> None:
        super().__init__()
        self.per_window = per_window
        self._window_ends = 0.0
        self._logged: dict[str, int] = {}
        # kind -> (logger name, level, the last message not written, how many were not)
        self._held: dict[str, tuple[str, int, str, int]] = {}

    def handle(self, record: logging.LogRecord) -> bool:
        with self.lock:  # reentrant: emitting the summaries takes it again
            if time.monotonic() >= self._window_ends:
                self._summarize()
                self._window_ends = time.monotonic() + CLIENT_ERROR_WINDOW_SECONDS
            kind = getattr(record, "client_error", None)
            if kind is not None:
                _cut_to_size(record)
                self._logged[kind] = self._logged.get(kind, 0) + 1
                if self._logged[kind] > self.per_window:
                    held = self._held.get(kind, ("", 0, "", 0))[3]
                    # The message, not the record: its arguments may hold a connection's buffers.
                    self._held[kind] = (record.name, record.levelno, str(record.msg), held + 1)
                    with suppress(Exception):  # a line that cannot be formatted is summed up by its template
                        self._held[kind] = (record.name, record.levelno, record.getMessage(), held + 1)
                    return False
        return super().handle(record)

    def close(self) -> None:
        with self.lock:
            self._summarize()
        super().close()

    def _summarize(self) -> None:
        for kind, (name, level, last, count) in self._held.items():
            message = f"{count} more {kind} not logged (LOG_CLIENT_ERRORS_PER_10S); the last: %s"
            # A LogRecord made here: logging.getLogger() would take logging's lock inside this handler's.
            super().handle(logging.LogRecord(name, level, "", 0, message, (last,), None))
        self._logged, self._held = {}, {}


def configure_logging(service_name: str, level: str, log_format: str, client_errors_per_window: int) -> None:
    """Log as LOG_FORMAT says, under the service's name (logger `catalog.requests` for SERVICE_NAME=catalog)."""
    handler = _BudgetedHandler(client_errors_per_window)
    handler.addFilter(_ServiceLoggerNames(service_name))
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class Metrics:
    """The service's Prometheus metrics, each named `<service_name>_...` (`catalog_requests_total`, say).

    With several server processes (PROMETHEUS_MULTIPROC_DIR set), prometheus-client adds up their numbers.
    """

    def __init__(self, service_name: str) -> None:
        def name(suffix: str) -> str:
            return f"{service_name}_{suffix}"

        self.requests = Counter(
            name("requests_total"), "Requests handled, by method and outcome.", ["method", "outcome"]
        )
        self.latency = Histogram(
            name("request_duration_seconds"),
            "Time from a whole request to its reply being ready, by method.",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.busy_workers = Gauge(
            name("busy_workers"), "Worker threads handling a request.", multiprocess_mode="livesum"
        )
        self.open_connections = Gauge(name("open_connections"), "Open client connections.", multiprocess_mode="livesum")
        self.closed_connections = Counter(
            name("connections_closed_total"),
            "Connections the server closed, by reason: malformed_message, connection_error, tls_handshake_failed, "
            "read_timeout, idle_timeout, over_buffered_bytes, over_max_message_bytes, over_max_connections, "
            "internal_error.",
            ["reason"],
        )
        self.db_connections_opened = Counter(name("db_connections_opened_total"), "MySQL connections the pool opened.")
        self.db_connections = Gauge(
            name("db_connections"), "MySQL connections the pool holds.", multiprocess_mode="livesum"
        )
        self.db_errors = Counter(name("db_errors_total"), "Database errors, by MySQL error number.", ["code"])
        self.transaction_retries = Counter(
            name("transaction_retries_total"), "Transactions re-run after a deadlock or lock wait."
        )
        self.build = Gauge(name("build_info"), "The running version (always 1).", ["version"], multiprocess_mode="max")
        self._processes = _ServerProcesses()

    def pool_hooks(self) -> PoolHooks:
        """Callbacks for db.py's pool."""
        return PoolHooks(
            connection_opened=self.db_connections_opened.inc,
            error=lambda code: self.db_errors.labels(str(code)).inc(),
            transaction_retried=self.transaction_retries.inc,
        )

    def report_stats(
        self, open_connections: int, busy_workers: int, database_connections: int, closed: Mapping[str, int]
    ) -> None:
        for reason, count in closed.items():
            self.closed_connections.labels(reason).inc(count)
        self.open_connections.set(open_connections)
        self.busy_workers.set(busy_workers)
        self.db_connections.set(database_connections)

    def observer(self, slow_request_ms: float, served: bool) -> "RequestObserver":
        """What observes each request; unless the metrics are `served`, it only logs (nobody could read them)."""
        return RequestObserver(self if served else None, slow_request_ms)

    def serve(self, host: str, port: int, version: str, several_processes: bool) -> None:
        """Serve /metrics; with several processes, the sum over all of them, and each one's process_* metrics."""
        self.build.labels(version).set(1)
        registry = REGISTRY
        if several_processes:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            self._processes.add(os.getpid())
            registry.register(self._processes)
        server = _MetricsServer((host, port))
        server.set_app(make_wsgi_app(registry))
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()

    def watch_process(self, pid: int) -> None:
        """Show a new server process's process_* metrics (multiprocess mode)."""
        self._processes.add(pid)

    def forget_process(self, pid: int) -> None:
        """Drop a dead server process's live gauges and process_* metrics (multiprocess mode)."""
        self._processes.discard(pid)
        multiprocess.mark_process_dead(pid)


class _ServerProcesses:
    """The standard process_* metrics (memory, CPU, descriptors, start time) of each live server process,
    labelled by pid, read from /proc at each scrape by the process serving it.

    Multiprocess mode has no process metrics: the default collector would
    describe only the process serving the scrape. Read here, each family
    keeps its type (a liveall Gauge would make the CPU seconds a gauge),
    a child pays nothing, and a dead one's series go as it is reaped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # processes come and go in the main thread, scrapes read in theirs
        self._readers: dict[int, ProcessCollector] = {}

    def add(self, pid: int) -> None:
        reader = ProcessCollector(pid=lambda: pid, registry=None)
        with self._lock:
            self._readers[pid] = reader

    def discard(self, pid: int) -> None:
        with self._lock:
            self._readers.pop(pid, None)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            readers = list(self._readers.items())
        families: dict[str, Metric] = {}
        for pid, reader in readers:
            for family in reader.collect():  # nothing of a process that died since
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return families.values()


class _ScrapeHandler(WSGIRequestHandler):
    timeout = SCRAPE_TIMEOUT_SECONDS  # a scraper that sends nothing, or half a request, gives its thread back

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


class _MetricsServer(ThreadingMixIn, WSGIServer):
    """/metrics with a thread per connection, as prometheus-client serves it, but at most MAX_SCRAPES at once,
    each for about SCRAPE_TIMEOUT_SECONDS at most.

    The metrics port shares the process's threads and descriptors with the
    Thrift port: idle connections to it, unbounded, would take them all.
    One over the bound is closed at once; a scraper tries again next time.
    The handler's timeout bounds each read; a scraper that trickles a byte
    at a time is cut off by the reaper, checking each second.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        # An IPv6 host needs an IPv6 socket (WSGIServer's is IPv4); `::` takes IPv4 too.
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        self._slots = threading.BoundedSemaphore(MAX_SCRAPES)
        self._since: dict[socket.socket, float] = {}  # each connection being served, and when it came
        # The reaper shuts a socket down only while it is open: closed, its descriptor may be a new connection's.
        self._open_lock = threading.Lock()
        super().__init__(address, _ScrapeHandler)
        threading.Thread(target=self._reap, name="metrics-reaper", daemon=True).start()

    def process_request(self, request: socket.socket, client_address: tuple) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        self._since[request] = time.monotonic()
        try:
            super().process_request(request, client_address)  # its thread gives the slot back
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: socket.socket, client_address: tuple) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def shutdown_request(self, request: socket.socket) -> None:
        with self._open_lock:
            self._since.pop(request, None)
            super().shutdown_request(request)

    def handle_error(self, request: socket.socket, client_address: tuple) -> None:
        """A scraper that left or was cut off is none of the service's business; anything else (no thread to
        start, say) is logged, capped."""
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            logger.warning("metrics request failed: %s: %s", type(error).__name__, error, extra=FAILED_SCRAPE)

    def _reap(self) -> None:
        while True:
            time.sleep(1.0)
            too_old = time.monotonic() - SCRAPE_TIMEOUT_SECONDS
            with self._open_lock:
                for request, since in list(self._since.items()):
                    if since < too_old:
                        with suppress(OSError):
                            request.shutdown(socket.SHUT_RDWR)


class RequestObserver:
    """Counts (when the metrics are served), times and logs each request: DEBUG always, WARNING when slow."""

    def __init__(self, metrics: Metrics | None, slow_request_ms: float) -> None:
        self.metrics = metrics
        self.slow_request_ms = slow_request_ms
        self.logger = logging.getLogger(KIT_LOGGER_PREFIX + "requests")
        self.debug = self.logger.isEnabledFor(logging.DEBUG)  # LOG_LEVEL is set once, at start-up
        # The processor calls this only for requests at least this long: all of
        # them when counted or logged at DEBUG, else only the slow ones.
        self.threshold = 0.0 if metrics or self.debug else slow_request_ms / 1000
        # (method, outcome) -> its counter and histogram; labels() on every
        # request would cost as much as the rest of the observation.
        self._series: dict[tuple[str, str], tuple] = {}

    def __call__(self, method: str, peer: str, outcome: str, seconds: float, request_id: str | None) -> None:
        # A method name the IDL lacks is the client's choice: one label and one name in the request log for all
        # of them, or a client could add metric series without limit, and lines of its own (the name may hold
        # line breaks). The WARNING line for it quotes the name, cut to size.
        if outcome in NAMED_BY_CLIENT:
            method = "unknown"
        if self.metrics:
            key = (method, outcome)
            if (series := self._series.get(key)) is None:
                series = self._series[key] = (self.metrics.requests.labels(*key), self.metrics.latency.labels(key[0]))
            series[0].inc()
            series[1].observe(seconds)
        slow = seconds * 1000 >= self.slow_request_ms
        if slow or self.debug:
            self._log(method, peer, outcome, seconds, request_id, slow)

    def _log(self, method: str, peer: str, outcome: str, seconds: float, request_id: str | None, slow: bool) -> None:
        duration_ms = round(seconds * 1000, 3)
        fields = {"method": method, "peer": peer, "duration_ms": duration_ms, "outcome": outcome}
        if request_id is not None:  # as the client sent it: a write refused for its request_id may hold 64 KiB
            valid = isinstance(request_id, str) and REQUEST_ID.fullmatch(request_id)
            fields["request_id"] = request_id if valid else "(invalid)"
        self.logger.log(
            logging.WARNING if slow else logging.DEBUG,
            "%s %s in %.1f ms%s from %s%s",  # text logs have no fields: the peer and request id are in the line
            method,
            outcome,
            duration_ms,
            " (slow)" if slow else "",
            peer,
            f", request_id {fields['request_id']}" if request_id is not None else "",
            extra=fields,
        )
