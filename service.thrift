/*
 * The Ledger service contract: accounts and money transfers.
 *
 * ping, health and the errors InvalidArgument, Conflict and Unavailable
 * come from the kit's base.thrift. Money is an integer number of minor
 * units (cents). Every write takes a client-chosen request_id: repeating a
 * write with the same request_id and the same arguments changes nothing and
 * returns what the first call wrote, as it is now (a transfer never
 * changes; an account's balance may have), so a client may always retry a
 * write whose reply it did not receive.
 */

include "servicekit/base.thrift"

enum AccountStatus { OPEN = 1, CLOSED = 2 }

struct Account {
  1: i64 id,
  2: string owner,
  /** Current balance in minor units; never negative. */
  3: i64 balance,
  4: AccountStatus status,
  5: i64 created_at_ms,
  6: i64 updated_at_ms,
}

/** One ledger entry. A deposit has from_account_id = 0, a withdrawal to_account_id = 0. */
struct Transfer {
  1: i64 id,
  2: i64 from_account_id,
  3: i64 to_account_id,
  4: i64 amount,
  5: string request_id,
  6: i64 created_at_ms,
}

/** next_cursor is "" on the last page. */
struct AccountPage { 1: list<Account> accounts, 2: string next_cursor }
struct TransferPage { 1: list<Transfer> transfers, 2: string next_cursor }

exception NotFound { 1: string message }
exception InsufficientFunds { 1: string message, 2: i64 available }

service Ledger extends base.BaseService {
  /** owner: 1..200 characters after trimming, no control characters (line breaks, tabs, text-direction controls). */
  Account create_account(1: string owner, 2: string request_id)
    throws (1: base.InvalidArgument invalid, 2: base.Conflict conflict, 3: base.Unavailable unavailable),

  Account get_account(1: i64 account_id)
    throws (1: NotFound not_found, 2: base.Unavailable unavailable),

  /** Accounts by id ascending. limit: 1..1000; cursor: "" for the first page. */
  AccountPage list_accounts(1: i32 limit, 2: string cursor)
    throws (1: base.InvalidArgument invalid, 2: base.Unavailable unavailable),

  /** amount: 1..10^15 minor units. */
  Transfer deposit(1: i64 account_id, 2: i64 amount, 3: string request_id)
    throws (1: base.InvalidArgument invalid, 2: NotFound not_found, 3: base.Conflict conflict,
            4: base.Unavailable unavailable),

  Transfer withdraw(1: i64 account_id, 2: i64 amount, 3: string request_id)
    throws (1: base.InvalidArgument invalid, 2: NotFound not_found, 3: base.Conflict conflict,
            4: InsufficientFunds insufficient, 5: base.Unavailable unavailable),

  Transfer transfer(1: i64 from_account_id, 2: i64 to_account_id, 3: i64 amount, 4: string request_id)
    throws (1: base.InvalidArgument invalid, 2: NotFound not_found, 3: base.Conflict conflict,
            4: InsufficientFunds insufficient, 5: base.Unavailable unavailable),

  /** An account's transfers, newest first. */
  TransferPage list_transfers(1: i64 account_id, 2: i32 limit, 3: string cursor)
    throws (1: base.InvalidArgument invalid, 2: NotFound not_found, 3: base.Unavailable unavailable),

  /** Needs a zero balance. */
  Account close_account(1: i64 account_id, 2: string request_id)
    throws (1: NotFound not_found, 2: base.Conflict conflict, 3: base.Unavailable unavailable,
            4: base.InvalidArgument invalid),
}
