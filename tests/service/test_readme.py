"""The README's quick-start transcript runs verbatim on a fresh start: same commands, same answers."""

import re
import shlex
import subprocess
import sys
import uuid

from helpers.processes import PROJECT_ENV, ROOT

# What differs from run to run: times, request ids.
VARYING = [
    (re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"), "<time>"),
    (re.compile(r"[0-9a-f]{32}"), "<request id>"),
    (re.compile(r'"(created|updated)_at_ms": \d+'), r'"\1_at_ms": <ms>'),
]


def quick_start_transcript() -> list[tuple[str, str]]:
    """(command, expected output) pairs of the README's ```console block under "Quick start"."""
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = quick_start.split("```console\n", 1)[1].split("```", 1)[0]
    steps: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], ""))
        else:
            steps[-1] = (steps[-1][0], steps[-1][1] + line + "\n")
    return steps


def normalized(text: str) -> str:
    for pattern, replacement in VARYING:
        text = pattern.sub(replacement, text)
    return text


def test_the_quick_start_transcript_runs_verbatim_on_a_fresh_start(start_ledger, database_server):
    fresh = database_server.database(f"readme_{uuid.uuid4().hex[:12]}")  # ids start at 1
    server = start_ledger(**fresh)
    env = {**PROJECT_ENV, "THRIFT_PORT": str(server.port)}  # `client.py` with no --servers finds it
    steps = quick_start_transcript()
    assert len(steps) >= 6
    for command, expected in steps:
        assert command.startswith(".venv/bin/python client.py "), command
        runnable = command.replace(".venv/bin/python", shlex.quote(sys.executable), 1)
        result = subprocess.run(
            ["bash", "-c", runnable], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert normalized(result.stdout) == normalized(expected), command
