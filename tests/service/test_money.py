"""Deposits, withdrawals and transfers: rules, idempotency and concurrency."""

import random
import threading
import time

import MySQLdb
import pytest

from client import ledger_thrift
from helpers.load import CallsAtOnce
from helpers.mysql import connect_kwargs, sql
from ledger_helpers import assert_ledger_invariant, funded_account
from servicekit.client import new_request_id
from tools.throwaway_db import wait_for

InvalidArgument, Conflict = ledger_thrift.base.InvalidArgument, ledger_thrift.base.Conflict


def test_deposit_withdraw_transfer_move_balances_and_record_entries(client):
    alice, bob = funded_account(client, 0), funded_account(client, 0)
    deposit = client.deposit(alice, 1000)
    assert (deposit.from_account_id, deposit.to_account_id, deposit.amount) == (0, alice, 1000)
    transfer = client.transfer(alice, bob, 300)
    assert (transfer.from_account_id, transfer.to_account_id) == (alice, bob)
    withdrawal = client.withdraw(bob, 100)
    assert (withdrawal.from_account_id, withdrawal.to_account_id) == (bob, 0)
    assert client.get_account(alice).balance == 700
    assert client.get_account(bob).balance == 200
    entries = client.list_transfers(bob, limit=10).transfers
    assert [entry.id for entry in entries] == [withdrawal.id, transfer.id]


def test_insufficient_funds_reports_available_and_changes_nothing(client):
    account = funded_account(client, 250)
    other = funded_account(client, 0)
    with pytest.raises(ledger_thrift.InsufficientFunds) as error:
        client.withdraw(account, 251)
    assert error.value.available == 250
    with pytest.raises(ledger_thrift.InsufficientFunds):
        client.transfer(account, other, 1000)
    assert client.get_account(account).balance == 250
    assert len(client.list_transfers(account, limit=10).transfers) == 1


@pytest.mark.parametrize("amount", [0, -5, 10**15 + 1])
def test_amount_out_of_range_is_invalid(client, amount):
    account = funded_account(client)
    for call in (
        lambda: client.deposit(account, amount),
        lambda: client.withdraw(account, amount),
        lambda: client.transfer(account, account + 1, amount),
    ):
        with pytest.raises(InvalidArgument) as error:
            call()
        assert error.value.field == "amount"


def test_largest_amount_is_accepted(client):
    account = funded_account(client, 0)
    assert client.deposit(account, 10**15).amount == 10**15


def test_transfer_to_same_account_is_invalid(client):
    account = funded_account(client)
    with pytest.raises(InvalidArgument):
        client.transfer(account, account, 1)


def test_money_to_or_from_unknown_accounts_or_account_0_is_not_found(client):
    account = funded_account(client)
    for call in (
        lambda: client.deposit(10**12, 1),
        lambda: client.withdraw(10**12, 1),
        lambda: client.transfer(account, 10**12, 1),
        lambda: client.transfer(10**12, account, 1),
        lambda: client.transfer(0, account, 1),
        lambda: client.transfer(account, 0, 1),
        lambda: client.deposit(0, 1),
        lambda: client.withdraw(0, 1),
        lambda: client.list_transfers(10**12, limit=10),
    ):
        with pytest.raises(ledger_thrift.NotFound):
            call()
    assert client.get_account(account).balance == 1000


def test_repeated_write_returns_original_and_applies_once(client):
    account, other = funded_account(client), funded_account(client, 0)
    request_id = new_request_id()
    first = client.transfer(account, other, 10, request_id)
    assert client.transfer(account, other, 10, request_id) == first
    assert client.get_account(other).balance == 10
    with pytest.raises(Conflict):
        client.transfer(account, other, 11, request_id)
    with pytest.raises(Conflict):
        client.deposit(other, 10, request_id)


@pytest.mark.parametrize("write", ["transfer", "close_account"])
def test_a_retry_racing_the_first_call_returns_its_result_not_an_error(ledger, client, database, write):
    account, other = funded_account(client, 10 if write == "transfer" else 0), funded_account(client, 0)
    arguments = (account, other, 10) if write == "transfer" else (account,)
    request_id = new_request_id()
    # Holding the account's row keeps the first call inside its transaction while the retry arrives.
    blocker = MySQLdb.connect(**connect_kwargs(database))
    blocker.cursor().execute("SELECT id FROM accounts WHERE id = %s FOR UPDATE", (account,))

    def call() -> object:
        with ledger.client(retries=0) as own:
            return getattr(own, write)(*arguments, request_id)

    calls = CallsAtOnce(2, call)
    # Before the fix both wait at the account's lock; after it, the retry waits at the request_id's claim.
    waiting = (
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
        " WHERE INFO = CONCAT('SELECT balance, status FROM accounts WHERE id = ', %s, ' FOR UPDATE')"
        " OR INFO LIKE CONCAT('INSERT INTO write_requests %%', %s, '%%')",
        (account, request_id),
    )
    wait_for(lambda: sql(database, *waiting)[0][0] == 2, 10, "both calls to wait inside their transactions")
    blocker.rollback()
    blocker.close()
    results = calls.join()
    assert len(results) == 2 and results[0] == results[1]  # InsufficientFunds or "already closed" for one before
    assert client.get_account(other if write == "transfer" else account).balance == (10 if write == "transfer" else 0)


def test_list_transfers_pages_newest_first_to_the_end(client):
    account = funded_account(client, 0)
    ids = [client.deposit(account, n + 1).id for n in range(5)]
    seen, cursor = [], ""
    while True:
        page = client.list_transfers(account, limit=2, cursor=cursor)
        seen += [t.id for t in page.transfers]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    other = funded_account(client)
    with pytest.raises(InvalidArgument) as error:
        client.list_transfers(other, limit=2, cursor=client.list_transfers(account, limit=2).next_cursor)
    assert error.value.field == "cursor"


def test_concurrent_random_transfers_keep_the_ledger_consistent(ledger, database):
    with ledger.client() as setup:
        accounts = [funded_account(setup, 10_000) for _ in range(8)]
    acknowledged: list[str] = []
    errors: list[Exception] = []
    stop_at = time.monotonic() + 4

    def trade(seed: int) -> None:
        rng = random.Random(seed)
        with ledger.client() as own:
            while time.monotonic() < stop_at:
                request_id = new_request_id()
                source, target = rng.sample(accounts, 2)
                try:
                    kind = rng.random()
                    if kind < 0.8:
                        own.transfer(source, target, rng.randint(1, 3000), request_id)
                    elif kind < 0.9:
                        own.deposit(target, rng.randint(1, 500), request_id)
                    else:
                        own.withdraw(source, rng.randint(1, 3000), request_id)
                    acknowledged.append(request_id)
                except ledger_thrift.InsufficientFunds:
                    pass
                except Exception as error:  # noqa: BLE001 - reported below
                    errors.append(error)

    threads = [threading.Thread(target=trade, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(acknowledged) > 100
    first, last = min(accounts), max(accounts)  # created one after another above
    stored = sql(
        database,
        "SELECT COUNT(*) FROM transfers WHERE from_account_id BETWEEN %s AND %s OR to_account_id BETWEEN %s AND %s",
        (first, last, first, last),
    )
    assert stored == [(len(acknowledged) + len(accounts),)]  # plus the opening deposits
    assert_ledger_invariant(database)


def test_money_is_never_truncated_by_the_client(client):
    account = funded_account(client, 0)
    for wrong in (5.5, True, "5", None):
        with pytest.raises(TypeError):
            client.deposit(account, wrong)
    with pytest.raises(TypeError):
        client.get_account(str(account))
    with pytest.raises(ValueError, match="range"):
        client.withdraw(account, 2**63)
    assert client.get_account(account).balance == 0
