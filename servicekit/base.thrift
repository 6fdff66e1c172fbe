/*
 * What every service built on servicekit has. A service's IDL includes this
 * file and extends BaseService:
 *
 *   include "servicekit/base.thrift"
 *   service Catalog extends base.BaseService { ... }
 *
 * The kit answers ping and health itself. Every method of the service
 * declares Unavailable (a database outage, safe to retry); every write (a
 * method with a request_id argument) also declares InvalidArgument and
 * Conflict, which the kit raises for a malformed or reused request_id.
 */

struct Health {
  /** False once the server has started draining. */
  1: bool serving,
  /** True when a query against the database just succeeded. */
  2: bool database,
  3: string version,
}

/** A bad argument; field names the argument. Do not retry unchanged. */
exception InvalidArgument { 1: string message, 2: string field }

/** The request contradicts the current state (for example, a request_id reused with other arguments). */
exception Conflict { 1: string message }

/** The database is unreachable or busy. Safe to retry with the same request_id. */
exception Unavailable { 1: string message }

service BaseService {
  /** Returns "pong". */
  string ping(),
  Health health(),
}
