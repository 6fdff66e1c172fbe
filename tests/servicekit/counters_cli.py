"""The kit's command line for the Counters test service, built as a copy's client.py builds its own.

`python tests/servicekit/counters_cli.py --servers HOST:PORT COMMAND ...` runs it as a person or a
script would (test_cli_process.py: exit statuses, signals, pipes); test_cli.py calls cli.main().
"""

import sys
from pathlib import Path

from counters import CountersClient, counters_thrift
from servicekit.cli import CommandLine

ROOT = Path(__file__).resolve().parents[2]

# NotFound has no exit status of its own here: it exits 9, as any declared error without one.
cli = CommandLine(CountersClient, counters_thrift.Counters, ROOT / "config.env", {}, show=str)
cli.command("get", "one counter", "name")
cli.command("add", "add to a counter", "name", "amount", write=True)
cli.command("list-counters", "every counter, a page at a time", page=True)

if __name__ == "__main__":
    sys.exit(cli.main())
