"""Idempotent writes: replays, conflicts, concurrent duplicates, a lost reply, malformed request ids."""

import threading

import MySQLdb
import pytest

from counters import CountersClient, counters_thrift
from helpers.load import CallsAtOnce
from helpers.mysql import connect_kwargs, sql
from helpers.proxy import ReplyDroppingProxy
from helpers.wire import call_bytes, framed, send_and_hang_up
from servicekit.client import new_request_id
from tools.throwaway_db import wait_for

base = counters_thrift.base


def test_a_repeated_write_returns_the_original_and_applies_once(client):
    request_id = new_request_id()
    first = client.add("replayed", 10, request_id)
    client.add("replayed", 5)
    assert client.add("replayed", 10, request_id) == first
    assert client.get("replayed").total == first.total + 5


def test_a_request_id_reused_with_other_arguments_is_a_conflict_and_changes_nothing(client):
    request_id = new_request_id()
    client.add("conflicted", 10, request_id)
    for other in (("conflicted", 11), ("another counter", 10)):
        with pytest.raises(base.Conflict):
            client.add(*other, request_id)
    assert client.get("conflicted").total == 10


@pytest.mark.parametrize("request_id", ["", "has space", "a" * 65, "ünïcode", "semi;colon"])
def test_a_malformed_request_id_is_invalid_argument(client, request_id):
    with pytest.raises(base.InvalidArgument) as error:
        client.add("malformed", 1, request_id)
    assert error.value.field == "request_id"


def test_concurrent_duplicate_requests_apply_once(server):
    request_id = new_request_id()
    results = []

    def add() -> None:
        with server.client() as own:
            results.append(own.add("duplicates", 7, request_id).id)

    threads = [threading.Thread(target=add) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    with server.client() as check:
        assert check.get("duplicates").total == 7


def test_a_write_that_duplicates_a_unique_key_is_a_conflict_not_an_internal_error(server, client):
    created = client.create("unique name")
    log_start = len(server.log())
    with pytest.raises(base.Conflict, match="conflicts with an existing row: Duplicate entry 'unique name'"):
        client.create("unique name")
    assert client.get("unique name") == created
    assert "Traceback" not in server.log()[log_start:]


def test_concurrent_duplicates_of_a_write_with_a_unique_key_return_its_result(server, database):
    request_id = new_request_id()
    # Holding the gap where the name would go keeps the first inside its transaction while the others arrive.
    blocker = MySQLdb.connect(**connect_kwargs(database))
    blocker.cursor().execute("SELECT id FROM counters WHERE name = 'created once' FOR UPDATE")

    def create() -> int:
        with server.client(retries=0) as own:
            return own.create("created once", request_id).id

    calls = CallsAtOnce(8, create)
    # The first waits at its INSERT, the others at the request_id it claimed.
    waiting = (
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'INSERT INTO counters (name)%%'"
        " OR INFO LIKE CONCAT('INSERT INTO write_requests %%', %s, '%%')"
    )
    wait_for(lambda: sql(database, waiting, (request_id,))[0][0] >= 2, 10, "two duplicates to wait")
    blocker.rollback()
    blocker.close()
    results = calls.join()
    assert len(results) == 8 and set(results) == {results[0]} and isinstance(results[0], int), results


def test_a_retry_after_a_lost_reply_is_applied_once(server, client):
    request_id = new_request_id()
    send_and_hang_up(server.port, framed(call_bytes(counters_thrift.Counters, "add", "lost", 500, request_id)))
    wait_for(lambda: sql_total(client, "lost") == 500, 10, "the first add to commit")
    assert client.add("lost", 500, request_id).total == 500
    assert client.get("lost").total == 500


def sql_total(client, name: str) -> int:
    try:
        return client.get(name).total
    except counters_thrift.NotFound:
        return 0


def test_the_client_retries_a_lost_reply_with_the_same_request_id(server, client, database):
    proxy = ReplyDroppingProxy(server.port, drop=1)
    try:
        with CountersClient(f"127.0.0.1:{proxy.port}") as through_proxy:
            addition = through_proxy.add("proxied", 40)
    finally:
        proxy.close()
    assert proxy.drop == 0  # the first reply really was lost
    assert client.get("proxied").total == 40
    assert sql(database, "SELECT id FROM additions WHERE name = 'proxied'") == [(addition.id,)]
