"""Settings for the server and the client, read in one place.

`config.env` holds the defaults (read with python-dotenv); variables in the
process environment override it. `load()` validates every value and returns a
frozen `Settings`; nothing else in the project reads the environment.
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

CONFIG_FILE = Path(__file__).with_name("config.env")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    thrift_host: str
    thrift_port: int
    thrift_workers: int
    thrift_processes: int
    thrift_idle_timeout: float
    thrift_read_timeout: float
    thrift_drain_timeout: float
    thrift_max_message_bytes: int
    thrift_max_connections: int
    thrift_tls_cert: str
    thrift_tls_key: str
    thrift_tls_client_ca: str
    mysql_host: str
    mysql_port: int
    mysql_user: str
    mysql_password: str = field(repr=False)
    mysql_database: str
    mysql_connect_timeout: int
    mysql_read_timeout: int
    mysql_write_timeout: int
    mysql_ssl_ca: str
    mysql_ssl_cert: str
    mysql_ssl_key: str
    db_pool: str
    db_pool_size: int
    db_deadlock_retries: int
    client_timeout: float
    client_tls_ca: str
    client_tls_cert: str
    client_tls_key: str
    log_level: str
    log_format: str
    slow_request_ms: float
    metrics_port: int


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Merge config.env with `environ` (default: os.environ) and validate."""
    values = {**dotenv_values(CONFIG_FILE), **(os.environ if environ is None else environ)}

    def text(name: str, choices: tuple[str, ...] = ()) -> str:
        value = values.get(name)
        if value is None:
            raise SettingsError(f"{name} is not set (add it to config.env)")
        if choices and value not in choices:
            raise SettingsError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        return value

    def number(name: str, kind: type = int, low: float = 1, high: float = 2**31) -> int | float:
        raw = text(name)
        try:
            value = kind(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, not {raw!r}")
        return value

    return Settings(
        thrift_host=text("THRIFT_HOST"),
        thrift_port=number("THRIFT_PORT", high=65535),
        thrift_workers=number("THRIFT_WORKERS", high=1024),
        thrift_processes=number("THRIFT_PROCESSES", high=256),
        thrift_idle_timeout=number("THRIFT_IDLE_TIMEOUT", float, low=0.1),
        thrift_read_timeout=number("THRIFT_READ_TIMEOUT", float, low=0.1),
        thrift_drain_timeout=number("THRIFT_DRAIN_TIMEOUT", float, low=0),
        thrift_max_message_bytes=number("THRIFT_MAX_MESSAGE_BYTES", low=1024, high=2**30),
        thrift_max_connections=number("THRIFT_MAX_CONNECTIONS", high=1_000_000),
        thrift_tls_cert=text("THRIFT_TLS_CERT"),
        thrift_tls_key=text("THRIFT_TLS_KEY"),
        thrift_tls_client_ca=text("THRIFT_TLS_CLIENT_CA"),
        mysql_host=text("MYSQL_HOST"),
        mysql_port=number("MYSQL_PORT", high=65535),
        mysql_user=text("MYSQL_USER"),
        mysql_password=text("MYSQL_PASSWORD"),
        mysql_database=text("MYSQL_DATABASE"),
        mysql_connect_timeout=number("MYSQL_CONNECT_TIMEOUT", high=3600),
        mysql_read_timeout=number("MYSQL_READ_TIMEOUT", high=3600),
        mysql_write_timeout=number("MYSQL_WRITE_TIMEOUT", high=3600),
        mysql_ssl_ca=text("MYSQL_SSL_CA"),
        mysql_ssl_cert=text("MYSQL_SSL_CERT"),
        mysql_ssl_key=text("MYSQL_SSL_KEY"),
        db_pool=text("DB_POOL", choices=("persistent", "pooled")),
        db_pool_size=number("DB_POOL_SIZE", high=1024),
        db_deadlock_retries=number("DB_DEADLOCK_RETRIES", low=0, high=100),
        client_timeout=number("CLIENT_TIMEOUT", float, low=0.01, high=3600),
        client_tls_ca=text("CLIENT_TLS_CA"),
        client_tls_cert=text("CLIENT_TLS_CERT"),
        client_tls_key=text("CLIENT_TLS_KEY"),
        log_level=text("LOG_LEVEL", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
        log_format=text("LOG_FORMAT", choices=("text", "json")),
        slow_request_ms=number("SLOW_REQUEST_MS", float, low=0),
        metrics_port=number("METRICS_PORT", low=0, high=65535),
    )
