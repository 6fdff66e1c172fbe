"""The container probe (`python -m servicekit.probe`) against servers that answer, and some that do not.

The Kubernetes tests (template/test_kubernetes.py) run it as the manifests do: a database lost, a drain.
"""

import struct
import subprocess
import sys

import pytest

from counters import counters_thrift
from helpers.processes import PROJECT_ENV, ROOT, run_python
from helpers.wire import FixedReplyServer, framed, reply_bytes
from tools.throwaway_db import free_port

# A REPLY of ping (binary, strict), up to its result's value.
PING_REPLY_HEADER = struct.pack("!Ii", 0x80010002, 4) + b"ping" + struct.pack("!i", 0)


def probe(*arguments: str, **env: str):
    return run_python("-m", "servicekit.probe", *arguments, **{"THRIFT_HOST": "127.0.0.1", **env})


@pytest.mark.parametrize(("call", "answer"), [("ping", "pong\n"), ("health", "serving: True, database: True")])
def test_a_server_that_answers_passes(server, call, answer):
    result = probe(call, "--timeout", "5", THRIFT_PORT=str(server.port))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(answer)


def test_nothing_listening_is_8_in_one_line():
    port = free_port()
    result = probe("health", THRIFT_PORT=str(port))
    assert result.returncode == 8
    assert result.stderr == f"error: no answer from 127.0.0.1:{port} ([Errno 111] Connection refused)\n"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 400 Bad Request\r\n\r\n",
        framed(reply_bytes(counters_thrift.Counters, "get", None)),
        framed(PING_REPLY_HEADER + b"\x0c\x00\x01" * 3000),  # a result of structs within structs, 3,000 deep
    ],
    ids=["an HTTP server", "a reply of another call", "values nested 3,000 deep"],
)
def test_a_server_of_something_else_is_1_in_one_line(reply):
    other = FixedReplyServer(reply)
    try:
        result = probe("ping", "--timeout", "5", THRIFT_PORT=str(other.port))
    finally:
        other.close()
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1


def test_a_reply_that_trickles_in_is_cut_off_at_the_timeout():
    reply = framed(reply_bytes(counters_thrift.Counters, "ping", "pong"))
    trickle = FixedReplyServer(*(reply[i : i + 1] for i in range(len(reply))), pause=0.1)  # 3 s in all
    try:
        result = probe("ping", "--timeout", "1", THRIFT_PORT=str(trickle.port))
    finally:
        trickle.close()
    assert (result.returncode, result.stderr) == (8, f"error: no answer from 127.0.0.1:{trickle.port} (timed out)\n")


def test_a_bad_setting_is_2_in_one_line():
    result = probe("ping", THRIFT_PORT="http")
    assert result.returncode == 2
    assert result.stderr.startswith("error: THRIFT_PORT") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("host", ["[::1]", "localhost:9090", "ledger 1"])
def test_a_thrift_host_that_is_no_host_is_2_in_one_line_as_client_py_says_it(host):
    result = probe("ping", THRIFT_HOST=host, THRIFT_PORT=str(free_port()))
    assert (result.returncode, result.stderr) == (
        2,
        f"error: THRIFT_HOST must be a host name or IP address, not {host!r}\n",
    )


@pytest.mark.parametrize(
    "arguments",
    [(), ("bogus",), ("ping", "health"), ("ping", "--timeout", "0"), ("ping", "--timeout", "\u0663")],
    ids=["no call", "unknown call", "two calls", "no time", "another script's digit"],
)
def test_a_bad_argument_is_2_in_one_line(arguments):
    result = probe(*arguments)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("error: servicekit.probe: ") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("redirect", ["2>&-", "2>/dev/full"], ids=["closed", "full"])
def test_an_error_stderr_cannot_take_keeps_its_status_and_stays_off_stdout(redirect):
    command = f"exec {sys.executable} -m servicekit.probe ping {redirect}"
    env = {**PROJECT_ENV, "THRIFT_HOST": "127.0.0.1", "THRIFT_PORT": str(free_port())}
    result = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (8, "")  # nothing listening; stdout holds only the answer


def test_an_answer_stdout_cannot_take_is_1_in_one_line(server):
    with open("/dev/full", "w") as full:
        command = [sys.executable, "-m", "servicekit.probe", "ping"]
        env = {**PROJECT_ENV, "THRIFT_HOST": "127.0.0.1", "THRIFT_PORT": str(server.port)}
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr == "error: cannot write the result (No space left on device); the call itself succeeded\n"
