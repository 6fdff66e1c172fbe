/*
 * The kit's own test service: named counters that only grow, and a few
 * methods that misbehave on purpose. Small enough to read in a minute, and
 * enough to prove every guarantee of the kit without the Ledger example.
 */

include "../../servicekit/base.thrift"

/** One applied add: the counter's total right after it. */
struct Addition {
  1: i64 id,
  2: string name,
  3: i64 amount,
  4: i64 total,
  5: string request_id,
}

struct Counter { 1: i64 id, 2: string name, 3: i64 total }
struct CounterPage { 1: list<Counter> counters, 2: string next_cursor }

exception NotFound { 1: string message }

service Counters extends base.BaseService {
  /** Add amount (1..10^9) to the counter name (1..64 characters), created at 0: once per request_id. */
  Addition add(1: string name, 2: i64 amount, 3: string request_id)
    throws (1: base.InvalidArgument invalid, 2: base.Conflict conflict, 3: base.Unavailable unavailable),

  /** Create the counter name at 0: Conflict if one of that name exists (a unique key). */
  Counter create(1: string name, 2: string request_id)
    throws (1: base.InvalidArgument invalid, 2: base.Conflict conflict, 3: base.Unavailable unavailable),

  Counter get(1: string name) throws (1: NotFound not_found, 2: base.Unavailable unavailable),

  /** Counters by id; limit 1..1000. */
  CounterPage list_counters(1: i32 limit, 2: string cursor)
    throws (1: base.InvalidArgument invalid, 2: base.Unavailable unavailable),

  /** text repeated times times (0..100000): large replies from small requests. */
  string repeat(1: string text, 2: i32 times) throws (1: base.InvalidArgument invalid, 2: base.Unavailable unavailable),

  /** Runs SELECT SLEEP(seconds) on a pooled connection: a request in flight, on demand. */
  void hold(1: double seconds) throws (1: base.Unavailable unavailable),

  /** Fails as a bug does: an exception nobody expected. */
  void fail() throws (1: base.Unavailable unavailable),

  /** Raises NotFound, which it does not declare. */
  void undeclared() throws (1: base.Unavailable unavailable),
}
