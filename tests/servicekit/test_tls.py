"""TLS between clients and the server, and between the server and MySQL."""

import re
import socket
import ssl
import struct
import time

import pytest
from thriftpy2.protocol import TBinaryProtocolFactory, TCompactProtocolFactory
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException

from counters import CountersClient, counters_thrift
from counters_testing import counters_process
from helpers.mysql import sql
from helpers.pki import make_pki
from helpers.processes import run_python
from helpers.wire import call_bytes, framed, refusal_of_a_call_ended_late
from servicekit.binary_protocol import UNSUPPORTED_CLIENT_TYPE
from servicekit.client import ServerUnreachable, TLSRefused, new_request_id
from servicekit.tls import tls_context
from tools.throwaway_db import wait_for


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki, database, tmp_path_factory):
    """A server that requires TLS and a client certificate signed by the test CA."""
    env = {
        **database,
        "THRIFT_TLS_CERT": pki["server"],
        "THRIFT_TLS_KEY": pki["server_key"],
        "THRIFT_TLS_CLIENT_CA": pki["ca"],
        "THRIFT_READ_TIMEOUT": "2",
    }
    process = counters_process(env, tmp_path_factory.mktemp("tls") / "server.log", ready=False)
    wait_for(lambda: _tls_answers(process.port, pki), 30, "the TLS server")
    yield process
    assert process.stop() == 0


def _tls_answers(port: int, pki) -> bool:
    try:
        with _tls_client(port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
            return client.ping() == "pong"
    except ServerUnreachable:
        return False


def _tls_client(port: int, context: ssl.SSLContext, host: str = "localhost") -> CountersClient:
    return CountersClient(f"{host}:{port}", tls=context, retries=0, timeout=5)


def test_a_tls_client_with_the_right_ca_and_certificate_is_served(tls_server, pki):
    with _tls_client(tls_server.port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
        assert client.add("over TLS 🔒", 3).total >= 3


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "certificate verify failed"),
        ("wrong hostname", "certificate verify failed"),
        ("no client certificate", "CERTIFICATE_REQUIRED"),
    ],
)
def test_tls_refuses_what_it_must(tls_server, pki, case, expected):
    context = {
        "wrong CA": lambda: tls_context(pki["other_ca"], pki["client"], pki["client_key"]),
        "wrong hostname": lambda: tls_context(pki["ca"], pki["client"], pki["client_key"]),
        "no client certificate": lambda: tls_context(pki["ca"]),
    }[case]()
    host = "127.0.0.1" if case == "wrong hostname" else "localhost"
    with pytest.raises(ServerUnreachable, match=expected), _tls_client(tls_server.port, context, host) as client:
        client.ping()


@pytest.mark.parametrize("case", ["wrong CA", "no client certificate"])
def test_a_tls_refusal_fails_the_call_at_once_instead_of_at_the_deadline(tls_server, pki, case):
    context = tls_context(pki["other_ca"]) if case == "wrong CA" else tls_context(pki["ca"])
    started = time.monotonic()
    with pytest.raises(TLSRefused), CountersClient(f"localhost:{tls_server.port}", tls=context, deadline=30) as client:
        client.ping()
    assert time.monotonic() - started < 10  # no retries until the 30 s deadline


@pytest.mark.parametrize(
    ("case", "alert"),
    [("no client certificate", "CERTIFICATE_REQUIRED"), ("a client certificate of another CA", "UNKNOWN_CA")],
)
def test_a_refused_client_certificate_is_told_as_such_never_as_a_call_that_may_have_been_applied(
    tls_server, start_server, pki, case, alert
):
    # Under TLS 1.3 the refusal comes after the client's handshake ends, as its request goes out: the server
    # must not reset the connection before the client reads the alert (else the write fails, as an outage).
    port, context = tls_server.port, tls_context(pki["ca"])
    if case == "a client certificate of another CA":
        tls = {"THRIFT_TLS_CERT": pki["server"], "THRIFT_TLS_KEY": pki["server_key"]}
        refusing = start_server(**tls, THRIFT_TLS_CLIENT_CA=pki["other_ca"], ready=False)
        wait_for(lambda: "serving counters" in refusing.log(), 30, "the refusing server")
        port, context = refusing.port, tls_context(pki["ca"], pki["client"], pki["client_key"])
    for _ in range(20):  # each once: the outcome was a race
        with pytest.raises(TLSRefused, match=alert) as error, _tls_client(port, context) as client:
            client.add("refused", 1)
        assert error.value.sent is False


@pytest.mark.parametrize(
    ("case", "refusal"),
    [("plain text", "this server accepts TLS only"), ("no client certificate", "CERTIFICATE_REQUIRED")],
)
def test_a_refusal_is_told_even_when_it_fails_the_write_of_a_long_request(tls_server, pki, case, refusal):
    # Longer than the socket buffers hold: the server closes the connection with the request unread, the
    # reset fails the write, and the reply saying why waits unread before it.
    context = None if case == "plain text" else tls_context(pki["ca"])
    with (
        pytest.raises(TLSRefused, match=refusal),
        CountersClient(f"localhost:{tls_server.port}", tls=context, retries=0, max_message_bytes=None) as client,
    ):
        client.add("x" * 32 * 2**20, 1)


def test_a_server_that_refuses_the_client_certificate_is_passed_over_for_one_that_accepts_it(
    tls_server, start_server, pki
):
    env = {"THRIFT_TLS_CERT": pki["server"], "THRIFT_TLS_KEY": pki["server_key"]}
    refusing = start_server(**env, THRIFT_TLS_CLIENT_CA=pki["other_ca"], ready=False)
    wait_for(lambda: "serving counters" in refusing.log(), 30, "the refusing server")
    servers = f"localhost:{refusing.port},localhost:{tls_server.port}"
    context = tls_context(pki["ca"], pki["client"], pki["client_key"])
    for _ in range(20):  # a new client starts at either address: about half start at the refusing one
        with CountersClient(servers, tls=context, deadline=10) as client:
            assert client.ping() == "pong"


def test_tls_refuses_an_expired_server_certificate(start_server, pki):
    server = start_server(THRIFT_TLS_CERT=pki["expired"], THRIFT_TLS_KEY=pki["expired_key"], ready=False)
    wait_for(lambda: "serving counters" in server.log(), 30, "the server")
    with pytest.raises(ServerUnreachable, match="expired"), _tls_client(server.port, tls_context(pki["ca"])) as client:
        client.ping()


def test_a_stock_client_speaking_unframed_compact_is_served_over_tls(tls_server, pki):
    context = tls_context(pki["ca"], pki["client"], pki["client_key"])
    client = make_client(
        counters_thrift.Counters, "localhost", tls_server.port, proto_factory=TCompactProtocolFactory(),
        ssl_context=context, timeout=10_000,
    )  # fmt: skip
    try:
        assert client.ping() == "pong"
        assert client.add("compact over TLS", 2, new_request_id()).total >= 2
    finally:
        client.close()


@pytest.mark.parametrize("compact", [False, True], ids=["binary", "compact"])
def test_an_unframed_call_over_the_maximum_whose_end_comes_after_the_refusal_is_told_so_not_reset_over_tls(
    tls_server, pki, compact
):
    context = tls_context(pki["ca"], pki["client"], pki["client_key"])
    with (
        socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as plain,
        context.wrap_socket(plain, server_hostname="localhost") as sock,
    ):
        error = refusal_of_a_call_ended_late(sock, counters_thrift.Counters, compact)
    assert error.message.startswith("a request longer than the server's maximum of 65536 bytes")


def test_the_container_probe_calls_a_tls_server_with_the_client_settings(tls_server, pki):
    tls = {"CLIENT_TLS_CA": pki["ca"], "CLIENT_TLS_CERT": pki["client"], "CLIENT_TLS_KEY": pki["client_key"]}
    port = str(tls_server.port)
    probed = run_python("-m", "servicekit.probe", "ping", THRIFT_HOST="localhost", THRIFT_PORT=port, **tls)
    assert (probed.returncode, probed.stdout) == (0, "pong\n")
    plain = run_python("-m", "servicekit.probe", "ping", THRIFT_HOST="localhost", THRIFT_PORT=port)
    refused = f"error: no answer from localhost:{port} (this server accepts TLS only)\n"
    assert (plain.returncode, plain.stderr) == (8, refused)  # as client.py says it
    missing = run_python("-m", "servicekit.probe", "ping", THRIFT_PORT=port, **{**tls, "CLIENT_TLS_CA": "/nonexistent"})
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: cannot load the TLS files (CLIENT_TLS_*): /nonexistent")


def test_a_plain_text_client_is_told_the_server_accepts_tls_only_at_once_instead_of_at_the_deadline(tls_server):
    started = time.monotonic()
    with (
        pytest.raises(TLSRefused, match="this server accepts TLS only"),
        CountersClient(f"127.0.0.1:{tls_server.port}", deadline=30) as plain,
    ):
        plain.ping()
    assert time.monotonic() - started < 10  # no retries until the 30 s deadline
    refused = r"TLS handshake failed: plain-text framed binary Thrift, to a port that serves TLS only"
    wait_for(lambda: re.search(refused, tls_server.log()), 5, "the warning")


def test_a_plain_text_client_of_several_tls_servers_is_told_that_each_refused_it(tls_server, start_server, pki):
    other = start_server(THRIFT_TLS_CERT=pki["server"], THRIFT_TLS_KEY=pki["server_key"], ready=False)
    wait_for(lambda: "serving counters" in other.log(), 30, "the second server")
    servers = f"127.0.0.1:{tls_server.port},127.0.0.1:{other.port}"
    with pytest.raises(TLSRefused) as error, CountersClient(servers, deadline=30) as plain:
        plain.ping()
    for port in (tls_server.port, other.port):
        assert f"127.0.0.1:{port} (this server accepts TLS only)" in str(error.value)


@pytest.mark.parametrize("protocol", [TBinaryProtocolFactory, TCompactProtocolFactory])
def test_a_stock_plain_text_client_gets_the_error_in_its_own_protocol(tls_server, protocol):
    client = make_client(counters_thrift.Counters, "127.0.0.1", tls_server.port, proto_factory=protocol(), timeout=5000)
    try:
        with pytest.raises(TApplicationException) as error:
            client.ping()
    finally:
        client.close()
    assert error.value.type == UNSUPPORTED_CLIENT_TYPE
    assert error.value.message == "this server accepts TLS only"


def test_a_tls_client_of_a_plain_server_is_refused_at_once_instead_of_at_the_deadline(server, pki):
    started = time.monotonic()
    with (
        pytest.raises(TLSRefused, match="HANDSHAKE_FAILURE"),
        CountersClient(f"localhost:{server.port}", tls=tls_context(pki["ca"]), deadline=30) as client,
    ):
        client.ping()
    assert time.monotonic() - started < 10  # no retries until the 30 s deadline
    assert "a TLS handshake, to a port that serves plain TCP" in server.log()


def test_connections_reset_after_the_first_byte_of_a_handshake_cost_no_worker(tls_server, pki):
    for _ in range(8):  # twice the workers
        with socket.create_connection(("127.0.0.1", tls_server.port)) as sock:
            sock.sendall(b"\x16")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # closed with a reset
    with _tls_client(tls_server.port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
        assert client.ping() == "pong"
    assert "Traceback" not in tls_server.log()


def test_stalled_tls_handshakes_do_not_block_other_clients(tls_server, pki):
    stalled = [socket.create_connection(("127.0.0.1", tls_server.port)) for _ in range(50)]
    try:
        with _tls_client(tls_server.port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
            assert client.ping() == "pong"
        for sock in stalled:  # closed after THRIFT_READ_TIMEOUT
            sock.settimeout(10)
            assert sock.recv(1) == b""
    finally:
        for sock in stalled:
            sock.close()


def test_a_missing_certificate_file_stops_the_server_with_one_line_naming_it_and_status_2(start_server, pki):
    server = start_server(THRIFT_TLS_CERT="/no/such/cert.pem", ready=False)
    assert server.process.wait(30) == 2
    assert server.log().startswith("error: cannot load the TLS certificate or key (THRIFT_TLS_*): /no/such/cert.pem")
    assert server.log().count("\n") == 1


def test_a_malformed_client_ca_file_stops_the_server_with_one_line_naming_it(start_server, pki, tmp_path):
    malformed = tmp_path / "clients-ca.pem"
    malformed.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    tls = {"THRIFT_TLS_CERT": pki["server"], "THRIFT_TLS_KEY": pki["server_key"]}
    server = start_server(**tls, THRIFT_TLS_CLIENT_CA=str(malformed), ready=False)
    assert server.process.wait(30) == 2
    assert server.log().startswith(f"error: cannot load the TLS certificate or key (THRIFT_TLS_*): {malformed}: ")
    assert server.log().count("\n") == 1


def test_a_key_with_a_passphrase_stops_the_server_with_one_line_instead_of_asking_for_it(start_server, pki):
    server = start_server(THRIFT_TLS_CERT=pki["server"], THRIFT_TLS_KEY=pki["encrypted_key"], ready=False)
    assert server.process.wait(30) == 2
    files = f"{pki['server']} and {pki['encrypted_key']}"
    assert server.log() == (
        f"error: cannot load the TLS certificate or key (THRIFT_TLS_*): {files}: the key has a passphrase: "
        "give it without one (openssl pkey -in KEY -out PLAIN_KEY)\n"
    )


def test_the_probe_refuses_a_client_key_with_a_passphrase_in_one_line_instead_of_asking_for_it(tls_server, pki):
    tls = {"CLIENT_TLS_CA": pki["ca"], "CLIENT_TLS_CERT": pki["client"], "CLIENT_TLS_KEY": pki["encrypted_key"]}
    probed = run_python(
        "-m", "servicekit.probe", "ping", THRIFT_HOST="localhost", THRIFT_PORT=str(tls_server.port), **tls
    )
    assert probed.returncode == 2
    assert probed.stderr == (
        f"error: cannot load the TLS files (CLIENT_TLS_*): {pki['client']} and {pki['encrypted_key']}: "
        "the key has a passphrase: give it without one (openssl pkey -in KEY -out PLAIN_KEY)\n"
    )


def test_tls_settings_without_the_certificate_stop_the_server_instead_of_serving_plain_text(start_server, pki):
    server = start_server(THRIFT_TLS_KEY=pki["server_key"], THRIFT_TLS_CLIENT_CA=pki["ca"], ready=False)
    assert server.process.wait(30) == 2
    assert server.log() == (
        "error: THRIFT_TLS_KEY is set but THRIFT_TLS_CERT is empty: THRIFT_TLS_KEY takes effect only with"
        " THRIFT_TLS_CERT\n"
    )


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ({"MYSQL_SSL_CA": "/no/such/ca.pem"}, "/no/such/ca.pem: No such file or directory"),
        (
            {"MYSQL_SSL_CERT": "client", "MYSQL_SSL_KEY": "encrypted_key"},
            "{client} and {encrypted_key}: the key has a passphrase",
        ),
    ],
    ids=["missing CA", "key with a passphrase"],
)
def test_database_tls_files_that_cannot_be_loaded_stop_the_server_with_one_line_naming_them(
    files, named, start_server, pki
):
    env = {"MYSQL_SSL_CA": pki["ca"], **{name: pki.get(value, value) for name, value in files.items()}}
    server = start_server(**env, ready=False)
    assert server.process.wait(30) == 2  # a setting to fix, not a database to wait for
    expected = f"error: cannot load the database's TLS files (MYSQL_SSL_*): {named.format(**pki)}"
    assert server.log().startswith(expected)
    assert server.log().count("\n") == 1


@pytest.mark.parametrize(
    ("database_tls", "refusal"),
    [
        ("none", "SSL is required, but the server does not support it"),
        # Signed by the right CA (the next test's certificate, for 127.0.0.1, passes): only the name is wrong.
        ("a certificate for localhost", "Validation of SSL server certificate failed"),
    ],
)
def test_mysql_tls_is_required_and_its_certificate_must_name_mysql_host(
    database_tls, refusal, start_server, own_database, pki
):
    if database_tls != "none":
        own_database.stop()
        own_database.start(f"--ssl-ca={pki['ca']}", f"--ssl-cert={pki['server']}", f"--ssl-key={pki['server_key']}")
    server = start_server(**own_database.env, MYSQL_SSL_CA=pki["ca"], ready=False)  # MYSQL_HOST is 127.0.0.1
    assert server.process.wait(60) == 1
    assert re.fullmatch(rf"error: cannot migrate \S+ on 127\.0\.0\.1:\d+: TLS/SSL error: {refusal}\n", server.log())


def test_the_server_reaches_mysql_over_tls_when_the_database_requires_it(start_server, own_database, pki):
    own_database.stop()
    own_database.start(f"--ssl-ca={pki['ca']}", f"--ssl-cert={pki['database']}", f"--ssl-key={pki['database_key']}")
    sql(own_database.env, "CREATE USER 'tls_only'@'%' REQUIRE SSL")
    sql(own_database.env, f"GRANT ALL ON `{own_database.database}`.* TO 'tls_only'@'%'")
    env = {**own_database.env, "MYSQL_USER": "tls_only"}
    with pytest.raises(RuntimeError, match="cannot migrate"):
        start_server(**env)  # this user is refused over plain TCP
    server = start_server(**env, MYSQL_SSL_CA=pki["ca"])
    with server.client() as client:
        assert client.health().database is True
        assert client.add("tls to mysql", 1).total == 1


def test_tls_bytes_that_never_complete_a_record_do_not_keep_a_connection_open(start_server, pki):
    server = start_server(
        THRIFT_TLS_CERT=pki["server"], THRIFT_TLS_KEY=pki["server_key"], THRIFT_IDLE_TIMEOUT="1", ready=False
    )
    wait_for(lambda: "serving counters" in server.log(), 30, "the server")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        record = _encrypted_ping(sock, tls_context(pki["ca"]))
        # One byte every 0.3 s: activity on the wire, but never a whole record, so never a request.
        assert any(_sent_then_closed(sock, bytes([byte]), 0.3) for byte in record[:-1]), "still open"


def _encrypted_ping(sock: socket.socket, context: ssl.SSLContext) -> bytes:
    """A TLS handshake over `sock` driven by hand; then the encrypted record of a framed ping, not sent."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            incoming.write(sock.recv(65536))
    sock.sendall(outgoing.read())
    tls.write(framed(call_bytes(counters_thrift.Counters, "ping")))
    return outgoing.read()


def _sent_then_closed(sock: socket.socket, data: bytes, seconds: float) -> bool:
    """Send `data`, then read (and drop) what comes for `seconds`: whether the server closed meanwhile."""
    sock.sendall(data)
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True
