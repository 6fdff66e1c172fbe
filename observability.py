"""Logs and Prometheus metrics: what operators see of a running server.

server.py configures logging here (LOG_FORMAT=text or json) and, with
METRICS_PORT set, serves these metrics. The engine and db.py do not import
this module: server.py hands them the callbacks below. With several server
processes, prometheus-client's multiprocess mode adds their numbers up; it
must be chosen (PROMETHEUS_MULTIPROC_DIR) before this module is imported.
"""

import json
import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess, start_http_server

logger = logging.getLogger("ledger.requests")
REQUEST_FIELDS = ("method", "peer", "duration_ms", "outcome", "request_id")

REQUESTS = Counter("ledger_requests_total", "Requests handled, by method and outcome.", ["method", "outcome"])
LATENCY = Histogram(
    "ledger_request_duration_seconds",
    "Time from a whole request to its reply being ready, by method.",
    ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BUSY_WORKERS = Gauge("ledger_busy_workers", "Worker threads handling a request.", multiprocess_mode="livesum")
OPEN_CONNECTIONS = Gauge("ledger_open_connections", "Open client connections.", multiprocess_mode="livesum")
DB_CONNECTIONS_OPENED = Counter("ledger_db_connections_opened_total", "MySQL connections the pool has opened.")
DB_CONNECTIONS = Gauge("ledger_db_connections", "MySQL connections the pool holds.", multiprocess_mode="livesum")
DB_ERRORS = Counter("ledger_db_errors_total", "Database errors, by MySQL error number.", ["code"])
TRANSACTION_RETRIES = Counter("ledger_transaction_retries_total", "Transactions re-run after a deadlock or lock wait.")
BUILD = Gauge("ledger_build_info", "The running version (always 1).", ["version"], multiprocess_mode="max")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and request fields when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({field: getattr(record, field) for field in REQUEST_FIELDS if hasattr(record, field)})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class RequestObserver:
    """Counts, times and logs each request: DEBUG always, WARNING when slow."""

    def __init__(self, slow_request_ms: float) -> None:
        self.slow_request_ms = slow_request_ms
        # (method, outcome) -> its counter and histogram; labels() on every
        # request would cost as much as the rest of the observation.
        self._series: dict[tuple[str, str], tuple] = {}

    def __call__(self, method: str, peer: str, outcome: str, seconds: float, request_id: str | None) -> None:
        # A method name the IDL lacks is the client's choice: one label for
        # all of them, or a client could add metric series without limit.
        key = ("unknown" if outcome == "unknown_method" else method, outcome)
        if (series := self._series.get(key)) is None:
            series = self._series[key] = (REQUESTS.labels(*key), LATENCY.labels(key[0]))
        series[0].inc()
        series[1].observe(seconds)
        duration_ms = round(seconds * 1000, 3)
        slow = duration_ms >= self.slow_request_ms
        if slow or logger.isEnabledFor(logging.DEBUG):
            fields = {"method": method, "peer": peer, "duration_ms": duration_ms, "outcome": outcome}
            if request_id is not None:
                fields["request_id"] = request_id
            logger.log(
                logging.WARNING if slow else logging.DEBUG,
                "%s %s in %.1f ms%s",
                method,
                outcome,
                duration_ms,
                " (slow)" if slow else "",
                extra=fields,
            )


def report_stats(open_connections: int, busy_workers: int, database_connections: int) -> None:
    OPEN_CONNECTIONS.set(open_connections)
    BUSY_WORKERS.set(busy_workers)
    DB_CONNECTIONS.set(database_connections)


def count_database_error(code: int | None) -> None:
    DB_ERRORS.labels(str(code)).inc()


def count_transaction_retry() -> None:
    TRANSACTION_RETRIES.inc()


def count_database_connection() -> None:
    DB_CONNECTIONS_OPENED.inc()


def serve_metrics(port: int, host: str, version: str, several_processes: bool) -> None:
    """Serve /metrics; with several processes, the sum over all of them."""
    BUILD.labels(version).set(1)
    if several_processes:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        start_http_server(port, host, registry=registry)
    else:
        start_http_server(port, host)


def forget_process(pid: int) -> None:
    """Drop a dead server process's live gauges (multiprocess mode)."""
    multiprocess.mark_process_dead(pid)
