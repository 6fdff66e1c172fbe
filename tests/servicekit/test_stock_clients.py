"""Stock Thrift clients, as their users write them, against the kit's server: no framing or protocol to choose.

Each calls ping, a write, a read and a call that raises a declared error on
one connection: thriftpy2's make_client (its default is buffered binary), and
Apache Thrift's Python and Java libraries with code from the Apache compiler,
plain and through TMultiplexedProtocol.
"""

import json
import re
import socket
import subprocess
import sys
import uuid

import pytest
import thriftpy2
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory, TCyBinaryProtocol
from thriftpy2.protocol.multiplex import TMultiplexedProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException, TMessageType
from thriftpy2.transport import TBufferedTransportFactory, TCyMemoryBuffer, TFramedTransportFactory

from counters import counters_thrift
from helpers.processes import ROOT
from helpers.wire import exchange, framed, message_header, refusal_of_a_call_ended_late

HERE = ROOT / "tests" / "servicekit"
LIBTHRIFT_JAR = "/usr/share/java/thrift.jar"  # Debian's libthrift-java; its manifest names the jars it needs
# For a JVM that runs a few seconds: the quick compiler alone, the simplest collector (javac twice as fast).
QUICK_JVM = ["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]


@pytest.fixture(scope="module")
def apache_code(tmp_path_factory):
    """The Apache compiler's Python code for counters.thrift (and the base.thrift it includes)."""
    out = tmp_path_factory.mktemp("apache-gen-py")
    subprocess.run(["thrift", "-r", "--gen", "py", "-out", str(out), str(HERE / "counters.thrift")], check=True)
    return out


@pytest.mark.parametrize(
    ("transport", "protocol"),
    [
        (None, None),  # make_client's defaults: buffered transport, binary protocol
        (TFramedTransportFactory, TCompactProtocolFactory),
        (TBufferedTransportFactory, TCompactProtocolFactory),
        (TFramedTransportFactory, TBinaryProtocolFactory),
    ],
    ids=["defaults (buffered binary)", "framed compact", "buffered compact", "framed binary"],
)
def test_thriftpy2_make_client_is_served(server, transport, protocol):
    factories = {"trans_factory": transport(), "proto_factory": protocol()} if transport else {}
    log_start = len(server.log())
    client = make_client(counters_thrift.Counters, "127.0.0.1", server.port, timeout=10_000, **factories)
    name = f"thriftpy2-{uuid.uuid4().hex}"
    try:
        assert client.ping() == "pong"
        assert client.add(name, 2, f"{name}-1").total == 2
        assert client.get(name).total == 2
        with pytest.raises(counters_thrift.NotFound, match="no counter named"):
            client.get(name + "-missing")
    finally:
        client.close()
    assert "WARNING" not in server.log()[log_start:]


@pytest.mark.parametrize(
    ("transport", "protocol", "service"),
    [("buffered", "binary", ""), ("framed", "compact", ""), ("framed", "binary", "Counters")],
    ids=["buffered binary", "framed compact", "multiplexed framed binary"],
)
def test_an_apache_thrift_client_is_served(server, apache_code, transport, protocol, service):
    name = f"apache-{uuid.uuid4().hex}"
    result = subprocess.run(
        [sys.executable, "-P", str(HERE / "apache_client.py"), str(server.port), transport, protocol, name, service],
        env={"PYTHONPATH": str(apache_code)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    missing = f"no counter named '{name}-missing'"
    assert json.loads(result.stdout) == {"ping": "pong", "add": 2, "get": 2, "error": missing}


@pytest.fixture(scope="module")
def apache_java_client(tmp_path_factory):
    """ApacheJavaClient.java compiled with the Apache compiler's Java code for counters.thrift: once, as it takes
    seconds."""
    out = tmp_path_factory.mktemp("apache-gen-java")
    subprocess.run(["thrift", "-r", "--gen", "java", "-out", str(out), str(HERE / "counters.thrift")], check=True)
    sources = [*map(str, out.glob("*.java")), str(HERE / "ApacheJavaClient.java")]
    javac_options = [f"-J{option}" for option in QUICK_JVM]
    subprocess.run(["javac", *javac_options, "-nowarn", "-cp", LIBTHRIFT_JAR, "-d", str(out), *sources], check=True)
    return out


@pytest.fixture(scope="module")
def apache_java_results(server, apache_java_client):
    """What the Java client's calls returned in each combination (one JVM runs them all), and the server's log."""
    log_start = len(server.log())
    name = f"java-{uuid.uuid4().hex[:16]}"  # with the combination, within 64 characters
    classpath = f"{apache_java_client}:{LIBTHRIFT_JAR}"
    result = subprocess.run(
        ["java", *QUICK_JVM, "-cp", classpath, "ApacheJavaClient", str(server.port), name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return name, json.loads(result.stdout), server.log()[log_start:]


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("transport", ["plain", "framed"])  # TSocket as it is, or under TFramedTransport
@pytest.mark.parametrize("multiplexed", ["", " multiplexed"], ids=["direct", "multiplexed"])
def test_an_apache_thrift_java_client_is_served(apache_java_results, transport, protocol, multiplexed):
    name, results, _ = apache_java_results
    combination = f"{transport} {protocol}{multiplexed}"
    missing = f"no counter named '{name}-{combination.replace(' ', '-')}-missing'"
    answers = {key: value for key, value in results[combination].items() if key != "too long"}
    assert answers == {"ping": "pong", "add": 2, "get": 2, "error": missing}


def test_the_apache_thrift_java_client_is_warned_of_only_its_calls_over_the_maximum(apache_java_results):
    _, _, log = apache_java_results
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 8, log  # one each of the combinations' last calls (below)
    assert all("(THRIFT_MAX_MESSAGE_BYTES)" in line for line in warnings), log


@pytest.mark.parametrize("protocol", ["binary", "compact"])
@pytest.mark.parametrize("transport", ["plain", "framed"])
@pytest.mark.parametrize("multiplexed", ["", " multiplexed"], ids=["direct", "multiplexed"])
def test_an_apache_thrift_java_clients_call_over_the_maximum_is_told_so_not_reset(
    apache_java_results, transport, protocol, multiplexed
):
    # Java's TSocket writes the call's long string and the fields after it apart: the server refuses the call
    # before the last ones come. Had it closed at once, the client's last write would be reset (Broken pipe),
    # and the refusal never read.
    _, results, _ = apache_java_results
    refusal = results[f"{transport} {protocol}{multiplexed}"]["too long"]
    assert re.match(r"a request (of \d+ bytes, over|longer than) the server's maximum of 65536", refusal), refusal


@pytest.mark.parametrize("protocol", [TBinaryProtocolFactory, TCompactProtocolFactory], ids=["binary", "compact"])
def test_a_client_whose_idl_drifted_is_told_which_argument_differs(server, tmp_path, protocol):
    drifted = tmp_path / "drifted.thrift"
    drifted.write_text("service Counters { string ping(), i64 get(1: i64 name) }\n")  # name: a string in ours
    service = thriftpy2.load(str(drifted), module_name="drifted_thrift").Counters
    client = make_client(service, "127.0.0.1", server.port, proto_factory=protocol(), timeout=5000)
    try:
        with pytest.raises(TApplicationException) as error:
            client.get(5)
        assert client.ping() == "pong"  # the same connection: a stock client does not reconnect
    finally:
        client.close()
    assert error.value.type == TApplicationException.PROTOCOL_ERROR
    assert error.value.message == "argument 'name' of get is i64, but the IDL declares string"


@pytest.mark.parametrize("protocol", [TBinaryProtocolFactory, TCompactProtocolFactory], ids=["binary", "compact"])
def test_a_thriftpy2_multiplexed_client_is_served(server, protocol):
    multiplexed = TMultiplexedProtocolFactory(protocol(), "Counters")  # as a TMultiplexedProcessor registers it
    client = make_client(counters_thrift.Counters, "127.0.0.1", server.port, proto_factory=multiplexed, timeout=10_000)
    name = f"multiplexed-{uuid.uuid4().hex}"
    try:
        assert client.ping() == "pong"
        assert client.add(name, 3, f"{name}-1").total == 3
        assert client.get(name).total == 3
        with pytest.raises(counters_thrift.NotFound):
            client.get(name + "-missing")
    finally:
        client.close()


@pytest.mark.parametrize(
    ("call", "answer"),
    [
        (message_header(b"Counters:ping") + b"\x00", ("ping", TMessageType.REPLY, 1)),
        (message_header(b"Counters:get") + b"\x0a\x00\x01" + b"\x00" * 8 + b"\x00", ("get", TMessageType.EXCEPTION, 1)),
    ],
    ids=["a call", "a call the IDL does not allow"],
)
def test_a_multiplexed_call_is_answered_under_its_method_name_as_apache_servers_answer(server, call, answer):
    # Node's and Go's clients look the reply up by the bare name: one answered "Counters:ping" never settles.
    reply, _ = exchange(server.port, framed(call))
    assert TCyBinaryProtocol(TCyMemoryBuffer(reply[4:])).read_message_begin() == answer


def test_a_call_for_another_service_is_told_the_method_and_service_are_unknown(server):
    client = make_client(
        counters_thrift.Counters,
        "127.0.0.1",
        server.port,
        proto_factory=TMultiplexedProtocolFactory(TBinaryProtocolFactory(), "Ledger"),
        timeout=10_000,
    )
    try:
        with pytest.raises(TApplicationException) as error:
            client.ping()
        with pytest.raises(TApplicationException, match="unknown method 'Ledger:get' of Counters"):
            client.get("x")  # on the same connection, still in step
    finally:
        client.close()
    assert error.value.type == TApplicationException.UNKNOWN_METHOD
    assert error.value.message == "unknown method 'Ledger:ping' of Counters"


ONE_WAY_IDL = "service Counters { string ping(), oneway void add_later(1: string name), oneway void get(1: i64 name) }"


@pytest.mark.parametrize(
    ("transport", "protocol"),
    [(TBufferedTransportFactory, TBinaryProtocolFactory), (TFramedTransportFactory, TCompactProtocolFactory)],
    ids=["buffered binary", "framed compact"],
)
@pytest.mark.parametrize(
    ("call", "warning"),
    [
        (("add_later", "x"), r"one-way call from 127\.0\.0\.1:\d+ of 'add_later' dropped: Counters answers every call"),
        (("get", 5), r"refusing a call from 127\.0\.0\.1:\d+: "),  # get's name is a string: off the IDL, and one-way
    ],
    ids=["unknown", "off the IDL"],
)
def test_a_one_way_call_is_dropped_with_a_warning_and_the_connection_stays_in_step(
    server, tmp_path, transport, protocol, call, warning
):
    idl = tmp_path / "one_way.thrift"
    idl.write_text(ONE_WAY_IDL + "\n")
    service = thriftpy2.load(str(idl), module_name="one_way_thrift").Counters
    factories = {"trans_factory": transport(), "proto_factory": protocol()}
    client = make_client(service, "127.0.0.1", server.port, timeout=5000, **factories)
    log_start = len(server.log())
    try:
        method, argument = call
        assert getattr(client, method)(argument) is None  # a one-way call reads no reply
        assert client.ping() == "pong"
        assert client.ping() == "pong"  # no reply of the one-way call's left to read first
    finally:
        client.close()
    assert re.search(warning, server.log()[log_start:])


@pytest.mark.parametrize("protocol", [TBinaryProtocolFactory, TCompactProtocolFactory], ids=["binary", "compact"])
def test_an_unframed_call_over_the_maximum_is_told_so_not_reset(server, protocol):
    client = make_client(counters_thrift.Counters, "127.0.0.1", server.port, proto_factory=protocol(), timeout=5000)
    try:
        with pytest.raises(TApplicationException) as error:
            client.add("x" * 70_000, 1, "too-long-1")
    finally:
        client.close()
    assert error.value.type == TApplicationException.PROTOCOL_ERROR
    assert error.value.message.startswith(
        "a request longer than the server's maximum of 65536 bytes (THRIFT_MAX_MESSAGE_BYTES)"
    )


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
def test_an_unframed_call_over_the_maximum_whose_end_comes_after_the_refusal_is_told_so_not_reset(server, compact):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        error = refusal_of_a_call_ended_late(sock, counters_thrift.Counters, compact)
    assert error.message.startswith("a request longer than the server's maximum of 65536 bytes")
