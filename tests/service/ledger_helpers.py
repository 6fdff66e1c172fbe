"""Helpers of the Ledger example's tests: funded accounts and the ledger's invariant."""

from helpers.mysql import sql


def funded_account(client, amount: int = 1000) -> int:
    account_id = client.create_account("funded").id
    if amount:
        client.deposit(account_id, amount)
    return account_id


def assert_ledger_invariant(database: dict[str, str]) -> None:
    """Every balance equals its ledger entries; money in minus money out equals all balances."""
    mismatched = sql(
        database,
        "SELECT a.id, a.balance,"
        " COALESCE((SELECT SUM(amount) FROM transfers WHERE to_account_id = a.id), 0)"
        " - COALESCE((SELECT SUM(amount) FROM transfers WHERE from_account_id = a.id), 0) AS ledger"
        " FROM accounts a HAVING a.balance <> ledger",
    )
    assert mismatched == []
    ((total_balance, negative),) = sql(database, "SELECT SUM(balance), SUM(balance < 0) FROM accounts")
    ((net_inflow,),) = sql(
        database,
        "SELECT COALESCE(SUM(CASE WHEN from_account_id = 0 THEN amount ELSE -amount END), 0)"
        " FROM transfers WHERE from_account_id = 0 OR to_account_id = 0",
    )
    assert total_balance == net_inflow
    assert negative == 0
