"""Logs and metrics as an operator sees them: exact counts after known calls."""

import json
import re
import signal
import time
import urllib.request

import pytest
from test_reliability import exchange, framed, message_header

from client import ledger_thrift, new_request_id
from conftest import free_port, wait_for


def scrape(port: int) -> dict[str, float]:
    """The metrics page as {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """One sample by name and labels, whatever the label order; 0 if absent."""
    for key, value in samples.items():
        match = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", key)
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if match.group(1) == name and all(found.get(k) == v for k, v in labels.items()):
            return value
    return 0.0


def known_calls(client) -> str:
    """3 pings, 1 create, 2 unknown accounts, 1 bad deposit; returns the create's request id."""
    for _ in range(3):
        client.ping()
    request_id = new_request_id()
    account = client.create_account("observed", request_id).id
    for _ in range(2):
        with pytest.raises(ledger_thrift.NotFound):
            client.get_account(10**12)
    with pytest.raises(ledger_thrift.InvalidArgument):
        client.deposit(account, 0)
    return request_id


def assert_known_counts(before: dict[str, float], after: dict[str, float]) -> None:
    """known_calls() happened between the two scrapes, and nothing else."""

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    assert grew("ledger_requests_total", method="ping", outcome="ok") == 3
    assert grew("ledger_requests_total", method="create_account", outcome="ok") == 1
    assert grew("ledger_requests_total", method="get_account", outcome="NotFound") == 2
    assert grew("ledger_requests_total", method="deposit", outcome="InvalidArgument") == 1
    assert grew("ledger_request_duration_seconds_count", method="ping") == 3
    assert sample(after, "ledger_build_info", version="1.0.0") == 1


def test_metrics_count_exactly_what_was_called_and_json_logs_carry_request_fields(start_ledger):
    metrics_port = free_port()
    server = start_ledger(METRICS_PORT=str(metrics_port), LOG_FORMAT="json", LOG_LEVEL="DEBUG")
    before = scrape(metrics_port)
    with server.client(retries=0) as client:
        request_id = known_calls(client)
        for gauge in ("ledger_open_connections", "ledger_db_connections"):  # sampled once a second
            wait_for(lambda gauge=gauge: sample(scrape(metrics_port), gauge) >= 1, 5, gauge)
    samples = scrape(metrics_port)
    assert_known_counts(before, samples)
    assert sample(samples, "ledger_db_connections_opened_total") >= 1
    assert sample(samples, "ledger_db_connections") <= 8  # at most one per worker
    assert sample(samples, "ledger_busy_workers") == 0
    assert server.stop() == 0

    lines = [json.loads(line) for line in server.log().splitlines()]
    (create,) = [entry for entry in lines if entry.get("method") == "create_account"]
    assert set(create) == {
        "time",
        "level",
        "logger",
        "message",
        "method",
        "peer",
        "duration_ms",
        "outcome",
        "request_id",
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", create["time"])
    assert (create["level"], create["logger"]) == ("DEBUG", "ledger.requests")
    assert (create["method"], create["outcome"], create["request_id"]) == ("create_account", "ok", request_id)
    assert create["peer"].startswith("127.0.0.1:") and 0 < create["duration_ms"] < 10_000
    assert create["message"].startswith("create_account ok in ")
    (ping,) = [entry for entry in lines if entry.get("method") == "ping"][:1]
    assert "request_id" not in ping  # reads carry none


def test_metrics_add_up_across_server_processes(start_ledger):
    metrics_port = free_port()
    server = start_ledger(METRICS_PORT=str(metrics_port), THRIFT_PROCESSES="2")
    wait_for(lambda: "metrics on" in server.log(), 10, "the metrics endpoint")
    before = scrape(metrics_port)
    with server.client(pool_size=4, retries=0) as client:
        known_calls(client)
    assert_known_counts(before, scrape(metrics_port))
    assert server.stop() == 0


def test_unknown_method_names_share_one_metric_series(start_ledger):
    metrics_port = free_port()
    server = start_ledger(METRICS_PORT=str(metrics_port))
    names = [f"probe_{n}".encode() for n in range(20)]
    for name in names:
        exchange(server.port, framed(message_header(name) + b"\x00"))
    samples = scrape(metrics_port)
    assert sample(samples, "ledger_requests_total", method="unknown", outcome="unknown_method") == len(names)
    assert not [key for key in samples if "probe_" in key]  # a client cannot add series
    assert server.stop() == 0


def test_slow_requests_are_logged_as_warnings(start_ledger):
    server = start_ledger(SLOW_REQUEST_MS="0", LOG_LEVEL="WARNING")
    with server.client() as client:
        client.ping()
    assert server.stop() == 0
    assert re.search(r" WARNING ledger.requests \[\d+\] ping ok in [\d.]+ ms \(slow\)", server.log())


def test_health_reports_a_hung_database_within_seconds(start_ledger, own_database):
    server = start_ledger(**own_database.env)
    with server.client(timeout=10, retries=0) as client:
        assert client.health().database is True
        own_database.process.send_signal(signal.SIGSTOP)  # the database hangs without closing anything
        try:
            started = time.monotonic()
            assert client.health().database is False
            assert time.monotonic() - started < 5  # the check's own 2 s timeout, not MYSQL_READ_TIMEOUT
        finally:
            own_database.process.send_signal(signal.SIGCONT)
        wait_for(lambda: client.health().database, 10, "the database to answer again")
