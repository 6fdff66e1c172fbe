"""The steps a service's server.py runs, in order, each failing with one clear line.

load_settings -> observe -> build_server -> migrate -> serve: whatever can be refused without the database (the IDL
against the handler, TLS files, taken ports) is, before migrations change the schema. A step that cannot go on
raises StartupError (message and exit status); run() prints it. `database` is the service's db.py module.
"""

import atexit
import logging
import os
import resource
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import MySQLdb

from servicekit.addresses import host_port
from servicekit.errors import ContractError, DatabaseUnavailable
from servicekit.exit_statuses import EXIT_INTERRUPTED
from servicekit.migrate import MigrationError
from servicekit.prefork import serve_in_processes
from servicekit.processor import GuardedProcessor
from servicekit.settings import ServerSettings, SettingsError, load, misspelled
from servicekit.thread_pool_server import TThreadPoolServer, bind
from servicekit.tls import load_ca, load_key_pair

if TYPE_CHECKING:  # imported for real in observe(), once the metrics mode is chosen
    from servicekit.observability import Metrics

logger = logging.getLogger(__name__)
# Descriptors a server process needs besides its clients' and its database
# connections: the listening socket, epoll, logs, metrics, imports.
RESERVED_DESCRIPTORS = 64
USAGE = (
    "usage: python server.py\n"
    "Takes no arguments: settings come from config.env beside it, overridden by the environment\n"
    "(THRIFT_PORT=9091 python server.py); the settings table under Configuration in the README lists them."
)


class StartupError(Exception):
    """The server cannot start: one line for the operator, and the exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def run(serve: Callable[[], None], arguments: list[str]) -> int:
    """server.py's main: `serve()`, or its StartupError in one line; the exit status.

    A server takes no arguments: its settings come from config.env and the
    environment. `--help` says so; any other argument is refused (status 2).
    """
    if arguments:
        asked = arguments in (["-h"], ["--help"])
        print(USAGE, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    try:
        serve()
    except StartupError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.status
    except KeyboardInterrupt:  # Ctrl-C before the server serves (then it drains): a migration file ran whole
        print("error: interrupted while starting", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def load_settings(config_file: Path) -> ServerSettings:
    try:
        settings = load(ServerSettings, config_file)
    except SettingsError as error:
        raise StartupError(str(error), 2) from None
    try:  # before migrations run, and named: binding would blame the metrics port, or say "Unknown error -2"
        socket.getaddrinfo(settings.thrift_host, settings.thrift_port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise StartupError(f"cannot resolve THRIFT_HOST {settings.thrift_host!r}: {error.strerror}", 2) from None
    return settings


def observe(settings: ServerSettings) -> "Metrics":
    """Configure logging, warn of misspelled settings in the environment; return the service's Metrics."""
    if settings.metrics_port and settings.thrift_processes > 1:
        # prometheus-client adds up several processes' metrics through files
        # in this directory, and reads the variable when first imported:
        # hence the import below, after it is set.
        directory = tempfile.mkdtemp(prefix=f"{settings.service_name}-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        # Removed when this process exits, whether start-up failed or its children drained (they leave by
        # os._exit, which runs no atexit hooks).
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
    from servicekit import observability

    observability.configure_logging(
        settings.service_name, settings.log_level, settings.log_format, settings.log_client_errors_per_10s
    )
    for warning in misspelled():  # logged once logging is set up, in the format the operator chose
        logger.warning(warning)
    return observability.Metrics(settings.service_name)


def migrate(database: ModuleType, settings: ServerSettings) -> list[str]:
    """Run db.py's migrate() and return the names of the migrations it applied."""
    try:
        applied = database.migrate(settings)
    except (MySQLdb.Error, DatabaseUnavailable) as error:
        where = f"{settings.mysql_database} on {settings.mysql_host}:{settings.mysql_port}"
        raise StartupError(f"cannot migrate {where}: {error.args[-1] if error.args else error}", 1) from None
    except MigrationError as error:
        raise StartupError(f"cannot migrate: {error}", 2) from None
    if applied:
        logger.info("applied migrations: %s", ", ".join(applied))
    return applied


def tls_context(settings: ServerSettings) -> ssl.SSLContext | None:
    """The server's TLS settings, or None to serve plain TCP."""
    if not settings.thrift_tls_cert:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        load_key_pair(context, settings.thrift_tls_cert, settings.thrift_tls_key)
        if settings.thrift_tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            load_ca(context, settings.thrift_tls_client_ca)
    except OSError as error:  # a missing or unreadable file, or ssl.SSLError; its strerror names the file
        message = error.strerror or error
        raise StartupError(f"cannot load the TLS certificate or key (THRIFT_TLS_*): {message}", 2) from None
    return context


def check_database_tls_files(settings: ServerSettings) -> None:
    """Refuse MYSQL_SSL_* files that cannot be loaded, naming them, before any connection: the driver says
    only "No such file or directory (2)", as a database error (status 1, tried again by a restart policy),
    and asks on the terminal for a key's passphrase."""
    if not settings.mysql_ssl_ca:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        load_ca(context, settings.mysql_ssl_ca)
        if settings.mysql_ssl_cert:
            load_key_pair(context, settings.mysql_ssl_cert, settings.mysql_ssl_key)
    except OSError as error:  # its strerror names the file
        message = error.strerror or error
        raise StartupError(f"cannot load the database's TLS files (MYSQL_SSL_*): {message}", 2) from None


def build_server(
    service: type, handler: object, database: ModuleType, settings: ServerSettings, version: str, metrics: "Metrics"
) -> TThreadPoolServer:
    """`handler` serving `service` on a TThreadPoolServer, not yet listening; its ports checked free and the
    database's TLS files loadable."""

    def is_serving() -> bool:
        return server.serving

    try:
        processor = GuardedProcessor(
            service,
            handler,
            version=version,
            is_serving=is_serving,
            database_answers=database.database_answers,
            observe=metrics.observer(settings.slow_request_ms, served=settings.metrics_port != 0),
        )
    except ContractError as error:
        raise StartupError(f"service.thrift and the handler disagree: {error}", 2) from None
    server = TThreadPoolServer(
        processor,
        host=settings.thrift_host,
        port=settings.thrift_port,
        workers=settings.thrift_workers,
        idle_timeout=settings.thrift_idle_timeout,
        read_timeout=settings.thrift_read_timeout,
        drain_timeout=settings.thrift_drain_timeout,
        max_message_bytes=settings.thrift_max_message_bytes,
        max_connections=connection_limit(settings),
        max_buffered_bytes=settings.thrift_max_buffered_bytes,
        tls=tls_context(settings),
        report_stats=lambda connections, busy, closed: metrics.report_stats(
            connections, busy, database.pooled_connections(), closed
        ),
    )
    _check_ports(settings)
    check_database_tls_files(settings)
    return server


def connection_limit(settings: ServerSettings) -> int:
    """THRIFT_MAX_CONNECTIONS, or fewer if the open-file limit (raised to its hard limit first) cannot hold them.

    Many hosts give a process 1,024 descriptors; out of them, accept() fails
    and the server can only wait. One WARNING says the setting was lowered.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft == resource.RLIM_INFINITY:
        return settings.thrift_max_connections
    database = settings.thrift_workers if settings.db_pool == "persistent" else settings.db_pool_size
    allowed = max(1, soft - RESERVED_DESCRIPTORS - database)
    if settings.thrift_max_connections <= allowed:
        return settings.thrift_max_connections
    logger.warning(
        "THRIFT_MAX_CONNECTIONS=%d is more than %d open files allow: at most %d connections per process; "
        "raise the open-file limit (ulimit -n) for more",
        settings.thrift_max_connections,
        soft,
        allowed,
    )
    return allowed


def serve(
    server: TThreadPoolServer, database: ModuleType, settings: ServerSettings, version: str, metrics: "Metrics"
) -> None:
    """Listen, then serve in one process or several until SIGTERM or SIGINT has drained them."""
    try:  # its port was free in build_server, but another program may have taken it since
        server.listen()
    except OSError as error:
        raise _cannot_listen(settings, error) from None
    _log_serving(settings)
    hooks = metrics.pool_hooks()
    if settings.thrift_processes > 1:
        serve_in_processes(
            server,
            settings.thrift_processes,
            lambda: database.init_pool(settings, hooks),
            children_started=lambda: _serve_metrics(settings, version, metrics),
            child_started=metrics.watch_process if settings.metrics_port else lambda pid: None,
            child_exited=metrics.forget_process if settings.metrics_port else lambda pid: None,
        )
    else:
        database.init_pool(settings, hooks)
        _serve_metrics(settings, version, metrics)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: server.close())
        try:
            server.serve()
        finally:
            database.close_pool()
    logger.info("stopped")


def _check_ports(settings: ServerSettings) -> None:
    """Fail in one line if the Thrift or metrics port is taken: before migrations run, and before the server
    would serve metrics (once it runs)."""
    try:
        bind(settings.thrift_host, settings.thrift_port).close()
    except OSError as error:
        raise _cannot_listen(settings, error) from None
    if not settings.metrics_port:
        return
    if settings.metrics_port == settings.thrift_port:
        raise StartupError(f"METRICS_PORT and THRIFT_PORT are both {settings.thrift_port}: give each its own", 2)
    address = (settings.thrift_host, settings.metrics_port)
    try:  # bound as the Thrift port is: `::` means IPv4 too, as for the metrics server
        bind(*address).close()
    except OSError as error:
        raise StartupError(f"cannot serve metrics on {host_port(*address)}: {os.strerror(error.errno)}", 1) from None


def _cannot_listen(settings: ServerSettings, error: OSError) -> StartupError:
    # os.strerror: create_server() adds the address to error.strerror
    return StartupError(
        f"cannot listen on {host_port(settings.thrift_host, settings.thrift_port)}: {os.strerror(error.errno)}", 1
    )


def _log_serving(settings: ServerSettings) -> None:
    processes = settings.thrift_processes
    logger.info(
        "serving %s on %s (Thrift framed or not, binary or compact%s), %d %s x %d workers, %s pool, "
        "database %s on %s:%s",
        settings.service_name,
        host_port(settings.thrift_host, settings.thrift_port),
        ", TLS" if settings.thrift_tls_cert else "",
        processes,
        "process" if processes == 1 else "processes",
        settings.thrift_workers,
        settings.db_pool,
        settings.mysql_database,
        settings.mysql_host,
        settings.mysql_port,
    )


def _serve_metrics(settings: ServerSettings, version: str, metrics: "Metrics") -> None:
    if settings.metrics_port:
        metrics.serve(settings.thrift_host, settings.metrics_port, version, settings.thrift_processes > 1)
        logger.info("metrics on http://%s/metrics", host_port(settings.thrift_host, settings.metrics_port))
