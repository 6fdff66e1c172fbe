"""Start the Ledger server: read settings, migrate, open the pool, serve.

Request path: client -> TThreadPoolServer (thread_pool_server.py) -> a worker
thread -> LedgerHandler (handlers.py) -> the DBUtils pool (db.py) -> MySQL.
SIGTERM or SIGINT drains: no new requests, in-flight ones finish, exit 0.
"""

import logging
import os
import signal
import ssl
import sys
import tempfile
from collections.abc import Callable

import MySQLdb

import db
import settings as settings_module
from handlers import VERSION, LedgerHandler, ledger_thrift
from thread_pool_server import GuardedProcessor, TThreadPoolServer, serve_in_processes

logger = logging.getLogger("ledger")


def tls_context(settings: settings_module.Settings) -> ssl.SSLContext | None:
    """The server's TLS settings, or None to serve plain TCP."""
    if not settings.thrift_tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.thrift_tls_cert, settings.thrift_tls_key or None)
    if settings.thrift_tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.thrift_tls_client_ca)
    return context


def build_server(
    settings: settings_module.Settings,
    observe: Callable | None = None,
    report_stats: Callable[[int, int], None] | None = None,
) -> TThreadPoolServer:
    """The Ledger service on a thread-pool server, not yet listening."""

    def is_serving() -> bool:
        return server.serving

    server = TThreadPoolServer(
        GuardedProcessor(ledger_thrift.Ledger, LedgerHandler(is_serving), observe),
        host=settings.thrift_host,
        port=settings.thrift_port,
        workers=settings.thrift_workers,
        idle_timeout=settings.thrift_idle_timeout,
        read_timeout=settings.thrift_read_timeout,
        drain_timeout=settings.thrift_drain_timeout,
        max_message_bytes=settings.thrift_max_message_bytes,
        max_connections=settings.thrift_max_connections,
        tls=tls_context(settings),
        report_stats=report_stats,
    )
    return server


def main() -> int:
    try:
        settings = settings_module.load()
    except settings_module.SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    several_processes = settings.thrift_processes > 1
    if settings.metrics_port and several_processes:
        # prometheus-client adds up several processes' metrics through files
        # in this directory; it reads the variable when it is first imported.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ledger-metrics-")
    import observability

    observability.configure_logging(settings.log_level, settings.log_format)
    try:
        applied = db.migrate(settings)
    except (MySQLdb.Error, db.DatabaseUnavailable) as error:
        logger.error(
            "cannot migrate %s on %s:%s: %s",
            settings.mysql_database,
            settings.mysql_host,
            settings.mysql_port,
            error.args[-1],
        )
        return 1
    if applied:
        logger.info("applied migrations: %s", ", ".join(applied))
    try:
        server = build_server(
            settings,
            observability.RequestObserver(settings.slow_request_ms),
            lambda connections, busy: observability.report_stats(connections, busy, db.pooled_connections()),
        )
    except OSError as error:  # a missing file, or ssl.SSLError
        print(f"error: cannot load the TLS certificate or key (THRIFT_TLS_*): {error}", file=sys.stderr)
        return 2
    try:
        server.listen()
    except OSError as error:
        logger.error("cannot listen on %s:%s: %s", settings.thrift_host, settings.thrift_port, error.strerror)
        return 1
    logger.info(
        "serving Ledger on %s:%s (framed binary protocol%s), %d processes x %d workers, %s pool, database %s on %s:%s",
        settings.thrift_host,
        settings.thrift_port,
        ", TLS" if settings.thrift_tls_cert else "",
        settings.thrift_processes,
        settings.thrift_workers,
        settings.db_pool,
        settings.mysql_database,
        settings.mysql_host,
        settings.mysql_port,
    )
    hooks = db.Hooks(
        connection_opened=observability.count_database_connection,
        error=observability.count_database_error,
        transaction_retried=observability.count_transaction_retry,
    )

    def serve_metrics() -> None:
        if settings.metrics_port:
            observability.serve_metrics(settings.metrics_port, settings.thrift_host, VERSION, several_processes)
            logger.info("metrics on http://%s:%s/metrics", settings.thrift_host, settings.metrics_port)

    if several_processes:
        serve_in_processes(
            server,
            settings.thrift_processes,
            lambda: db.init_pool(settings, hooks),
            children_started=serve_metrics,
            child_exited=observability.forget_process if settings.metrics_port else lambda pid: None,
        )
    else:
        db.init_pool(settings, hooks)
        serve_metrics()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: server.close())
        try:
            server.serve()
        finally:
            db.close_pool()
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
