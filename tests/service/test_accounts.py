"""Accounts through the real client and server: create, read, list, close."""

import pytest

from client import ledger_thrift
from servicekit.client import new_request_id

OPEN, CLOSED = ledger_thrift.AccountStatus.OPEN, ledger_thrift.AccountStatus.CLOSED
InvalidArgument, Conflict = ledger_thrift.base.InvalidArgument, ledger_thrift.base.Conflict


def test_create_then_get_returns_the_stored_account(client):
    created = client.create_account("  Alice  ")
    assert created.owner == "Alice"
    assert (created.balance, created.status) == (0, OPEN)
    assert created.created_at_ms == created.updated_at_ms > 1_700_000_000_000
    assert client.get_account(created.id) == created


@pytest.mark.parametrize(
    "owner",
    [
        "O'Brien",
        'quote " and backslash \\ and \\\\',
        "'; DROP TABLE accounts; --",
        "Zoë 🦄 李小龍 👩‍👩‍👧",
        "%s %(name)s",
        "x" * 200,
    ],
)
def test_hostile_and_unicode_owners_round_trip_intact(client, owner):
    account = client.create_account(owner)
    assert client.get_account(account.id).owner == owner


@pytest.mark.parametrize(
    "owner",
    ["", "   ", "x" * 201, "tab\there", "new\nline", "nul\x00", "bell\x07", "del\x7f", "line\u2028sep", "\u202eevil"],
)
def test_owner_must_have_1_to_200_printable_characters(client, owner):
    with pytest.raises(InvalidArgument) as error:
        client.create_account(owner)
    assert error.value.field == "owner"


@pytest.mark.parametrize("request_id", ["", "has space", "a" * 65])
def test_every_write_checks_its_request_id(client, request_id):
    account = client.create_account("request ids").id
    for write in (
        lambda: client.create_account("bob", request_id),
        lambda: client.deposit(account, 1, request_id),
        lambda: client.withdraw(account, 1, request_id),
        lambda: client.transfer(account, account + 1, 1, request_id),
        lambda: client.close_account(account, request_id),
    ):
        with pytest.raises(InvalidArgument) as error:
            write()
        assert error.value.field == "request_id"


def test_create_account_replay_returns_the_same_account(client):
    request_id = new_request_id()
    first = client.create_account("carol", request_id)
    again = client.create_account("carol", request_id)
    assert again.id == first.id
    with pytest.raises(Conflict):
        client.create_account("someone else", request_id)


def test_get_unknown_account_is_not_found(client):
    with pytest.raises(ledger_thrift.NotFound):
        client.get_account(10**12)


def test_list_accounts_pages_to_the_end_in_id_order(client):
    created = [client.create_account(f"pager-{n}").id for n in range(7)]
    seen, cursor, pages = [], "", 0
    while True:
        page = client.list_accounts(limit=3, cursor=cursor)
        assert len(page.accounts) <= 3
        seen += [account.id for account in page.accounts]
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert seen == sorted(seen)
    assert len(seen) == len(set(seen))
    assert set(created) <= set(seen)
    assert pages == -(-len(seen) // 3)


@pytest.mark.parametrize("limit", [0, -1, 1001])
def test_list_accounts_limit_out_of_range(client, limit):
    with pytest.raises(InvalidArgument) as error:
        client.list_accounts(limit=limit)
    assert error.value.field == "limit"


@pytest.mark.parametrize("cursor", ["garbage", "bm90OmFjY291bnRz", "dHJhbnNmZXJzOjE6NQ==", "!!!"])
def test_cursor_not_from_the_service_is_rejected(client, cursor):
    with pytest.raises(InvalidArgument) as error:
        client.list_accounts(limit=10, cursor=cursor)
    assert error.value.field == "cursor"


def test_close_account_needs_zero_balance_then_blocks_money(client):
    account = client.create_account("dave")
    client.deposit(account.id, 50)
    with pytest.raises(Conflict):
        client.close_account(account.id)
    client.withdraw(account.id, 50)
    request_id = new_request_id()
    closed = client.close_account(account.id, request_id)
    assert closed.status == CLOSED
    assert client.close_account(account.id, request_id) == closed  # replay
    with pytest.raises(Conflict):
        client.close_account(account.id)  # a new request on a closed account
    with pytest.raises(Conflict):
        client.deposit(account.id, 1)
    with pytest.raises(ledger_thrift.NotFound):
        client.close_account(10**12)
