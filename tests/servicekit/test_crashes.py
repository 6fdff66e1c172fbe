"""Crashes and stops under load: kill -9, SIGTERM, restarts. Nothing half-applied, nothing lost, nothing twice."""

import signal
import time

from counters_testing import assert_applied_once, assert_consistent, run_adds


def test_kill_9_mid_load_loses_no_acknowledged_write_and_duplicates_none(start_server, database):
    server = start_server()
    names = [f"kill-{n}" for n in range(6)]
    with server.client(pool_size=8, retries=30, deadline=60) as client:

        def kill_and_restart() -> None:
            server.stop(signal.SIGKILL)
            start_server(port=server.port)

        outcome = run_adds(client, names, seconds=3, mid_load=kill_and_restart)
        assert outcome["errors"] == []
        assert len(outcome["acknowledged"]) > 50
        for name in names:
            acknowledged = sum(amount for _, added_to, amount in outcome["acknowledged"] if added_to == name)
            assert client.get(name).total == acknowledged
    assert_applied_once(database, outcome["acknowledged"])
    assert_consistent(database)


def test_the_only_server_killed_and_back_3_s_later_fails_no_call_in_flight(start_server, database):
    server = start_server()
    names = [f"restart-{n}" for n in range(4)]
    with server.client(pool_size=8) as client:  # the defaults: retry until the 30 s deadline

        def kill_and_restart_3_s_later() -> None:
            server.stop(signal.SIGKILL)
            time.sleep(3)  # the outage the test is about
            start_server(port=server.port)

        outcome = run_adds(client, names, seconds=6, mid_load=kill_and_restart_3_s_later)
    assert outcome["errors"] == []
    assert_applied_once(database, outcome["acknowledged"])


def test_sigterm_under_load_commits_or_rolls_back_whole_and_never_hangs(start_server, database):
    server = start_server(THRIFT_DRAIN_TIMEOUT="5")
    with server.client(pool_size=8, retries=0, timeout=10) as client:

        def stop_server() -> None:
            server.process.send_signal(signal.SIGTERM)

        outcome = run_adds(client, [f"sigterm-{n}" for n in range(6)], seconds=3, mid_load=stop_server)
    assert server.process.wait(15) == 0
    assert outcome["acknowledged"] and outcome["errors"]  # the stop really happened mid-load
    assert_applied_once(database, outcome["acknowledged"])
    assert_consistent(database)


def test_a_server_restart_between_two_calls_is_invisible(start_server):
    server = start_server()
    with server.client() as client:
        client.add("restart", 1)
        assert server.stop() == 0
        server = start_server(port=server.port)
        assert client.get("restart").total == 1
