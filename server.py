"""Start the Ledger server: settings, the thread-pool server, migrations, the pool.

Request path: client -> TThreadPoolServer (servicekit) -> a worker thread ->
GuardedProcessor -> LedgerHandler (handlers.py) -> db.py's pool -> MySQL.
SIGTERM or SIGINT drains: no new requests, running ones finish, exit 0.
"""

import sys
from pathlib import Path

import db
from handlers import VERSION, LedgerHandler, ledger_thrift
from servicekit import startup

CONFIG_FILE = Path(__file__).with_name("config.env")


def serve() -> None:
    settings = startup.load_settings(CONFIG_FILE)
    metrics = startup.observe(settings)
    server = startup.build_server(ledger_thrift.Ledger, LedgerHandler(), db, settings, VERSION, metrics)
    startup.migrate(db, settings)
    startup.serve(server, db, settings, VERSION, metrics)


if __name__ == "__main__":
    sys.exit(startup.run(serve, sys.argv[1:]))
