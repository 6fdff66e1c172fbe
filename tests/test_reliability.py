"""Hostile input, slow clients, connection limits, faults and TLS, on real processes."""

import datetime
import ipaddress
import random
import signal
import socket
import ssl
import struct
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_money import assert_ledger_invariant
from thriftpy2.protocol import TCyBinaryProtocol
from thriftpy2.thrift import TMessageType
from thriftpy2.transport import TCyMemoryBuffer

import settings as settings_module
from client import LedgerClient, ServerUnreachable, ledger_thrift, new_request_id, tls_context
from conftest import LedgerProcess, sql, wait_for


def call_bytes(method: str, *args: object) -> bytes:
    """A well-formed CALL message (without the frame header)."""
    buffer = TCyMemoryBuffer()
    protocol = TCyBinaryProtocol(buffer)
    protocol.write_message_begin(method, TMessageType.CALL, 1)
    getattr(ledger_thrift.Ledger, method + "_args")(*args).write(protocol)
    return buffer.getvalue()


def framed(payload: bytes) -> bytes:
    return struct.pack("!i", len(payload)) + payload


def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[bytes, str]:
    """Send raw bytes and half-close; everything the server sends back, and our address."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        peer = "{}:{}".format(*sock.getsockname())
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received, peer


def message_header(name: bytes) -> bytes:
    return struct.pack("!iI", -2147418112 | TMessageType.CALL, len(name)) + name + struct.pack("!i", 1)


HOSTILE = {
    "garbage bytes": b"\x13\x37" * 50,
    "an HTTP request": b"GET / HTTP/1.1\r\nHost: ledger\r\n\r\n",
    "a truncated message": framed(call_bytes("get_account", 1)[:-6]),
    "a negative frame length": struct.pack("!i", -5) + b"12345",
    "a huge frame length": struct.pack("!i", 2**31 - 1),
    "a 1 GiB string": framed(message_header(b"create_account") + b"\x0b\x00\x01" + struct.pack("!i", 2**30) + b"\x00"),
    "a list of 2 billion": framed(
        message_header(b"ping") + b"\x0f\x00\x09\x02" + struct.pack("!i", 2**31 - 1) + b"\x00"
    ),
    "5 million empty structs": framed(
        message_header(b"ping") + b"\x0f\x00\x09\x0c" + struct.pack("!i", 5_000_000) + b"\x00" * 1000
    ),
    "deep nesting": framed(message_header(b"ping") + b"\x0c\x00\x09" * 100 + b"\x00" * 101),
    "a wrong argument type": framed(message_header(b"get_account") + b"\x0b\x00\x01\x00\x00\x00\x02hi\x00"),
    "a negative string length": framed(message_header(b"create_account") + b"\x0b\x00\x01\xff\xff\xff\xfe\x00"),
    "bytes after the message": framed(call_bytes("ping") + b"extra"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_closes_only_that_connection_with_one_warning(ledger, client, name):
    log_start = len(ledger.log())
    reply, peer = exchange(ledger.port, HOSTILE[name])
    assert reply == b""  # closed, nothing allocated or answered

    def lines_about_peer() -> list[str]:
        return [line for line in ledger.log().splitlines() if f"{peer}:" in line or line.endswith(peer)]

    wait_for(lines_about_peer, 5, "the warning")
    assert len(lines_about_peer()) == 1 and " WARNING " in lines_about_peer()[0]
    assert "Traceback" not in ledger.log()[log_start:]
    assert client.ping() == "pong"


def test_unknown_method_gets_an_error_reply_and_a_warning(ledger, client):
    reply, _ = exchange(ledger.port, framed(message_header(b"steal_money") + b"\x00"))
    protocol = TCyBinaryProtocol(TCyMemoryBuffer(reply[4:]))
    name, kind, _ = protocol.read_message_begin()
    assert (name, kind) == ("steal_money", TMessageType.EXCEPTION)
    assert "unknown method 'steal_money'" in ledger.log()
    assert client.ping() == "pong"


def test_requests_sent_together_or_byte_by_byte_are_all_answered_in_order(ledger):
    calls = [call_bytes("ping"), call_bytes("get_account", 10**12), call_bytes("ping")]
    with socket.create_connection(("127.0.0.1", ledger.port), timeout=5) as sock:
        sock.sendall(b"".join(map(framed, calls)))  # all three arrive in one read
        for byte in framed(call_bytes("ping")):  # and one more, a byte at a time
            sock.send(bytes([byte]))
            time.sleep(0.005)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    names = []
    while received:
        (size,) = struct.unpack_from("!i", received)
        names.append(TCyBinaryProtocol(TCyMemoryBuffer(received[4 : 4 + size])).read_message_begin()[0])
        received = received[4 + size :]
    assert names == ["ping", "get_account", "ping", "ping"]


def rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def mutations() -> st.SearchStrategy[bytes]:
    valid = [call_bytes("get_account", 1), call_bytes("create_account", "x" * 30, "req-1"), call_bytes("ping")]

    def mutate(data: tuple) -> bytes:
        message, position, replacement, cut = data
        position %= len(message)
        return (message[:position] + replacement + message[position + len(replacement) :])[: cut or None]

    return st.one_of(
        st.binary(max_size=300),
        st.tuples(
            st.sampled_from(valid), st.integers(0, 300), st.binary(min_size=1, max_size=8), st.integers(0, 300)
        ).map(mutate),
    )


def test_fuzzed_messages_never_hurt_the_server(start_ledger):
    server = start_ledger(LOG_LEVEL="ERROR")
    before = rss_kb(server.process.pid)
    sent = []

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(payload=mutations(), frame_it=st.booleans())
    def send(payload: bytes, frame_it: bool) -> None:
        exchange(server.port, framed(payload) if frame_it else payload)
        sent.append(payload)

    send()
    assert len(sent) >= 10_000
    with server.client() as client:
        assert client.ping() == "pong"
    assert rss_kb(server.process.pid) - before < 50 * 1024
    assert server.stop() == 0


def test_stalled_senders_are_closed_after_the_read_timeout_and_do_not_block_others(start_ledger):
    server = start_ledger(THRIFT_READ_TIMEOUT="1", THRIFT_WORKERS="2")
    stalled = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(framed(call_bytes("ping"))[:7])  # part of a message, then silence
            stalled.append(sock)
        with server.client(timeout=2, retries=0) as client:
            account = client.create_account("not blocked").id
            for _ in range(50):
                client.get_account(account)
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(1) == b""  # the server closed it
    finally:
        for sock in stalled:
            sock.close()


def test_connections_beyond_the_maximum_are_closed_at_once_with_one_log_line(start_ledger):
    server = start_ledger(THRIFT_MAX_CONNECTIONS="20")
    kept = [server.client(pool_size=1) for _ in range(20)]
    try:
        for client in kept:
            assert client.ping() == "pong"
        for _ in range(50):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as refused:
                assert refused.recv(1) == b""
        assert all(client.ping() == "pong" for client in kept)
        wait_for(lambda: "refused 50 connections" in server.log(), 5, "the refusal warning")
        assert server.log().count("refused") == 1
    finally:
        for client in kept:
            client.close()


def run_transfers(client: LedgerClient, accounts: list[int], seconds: float, threads: int = 8) -> dict:
    """Random transfers from several threads; what was acknowledged and what failed how."""
    outcome = {"acknowledged": [], "errors": [], "slowest_failure": 0.0}
    stop_at = time.monotonic() + seconds

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            source, target = rng.sample(accounts, 2)
            started = time.monotonic()
            try:
                client.transfer(source, target, rng.randint(1, 50), new_request_id())
                outcome["acknowledged"].append(1)
            except ledger_thrift.InsufficientFunds:
                pass
            except (ledger_thrift.Unavailable, ServerUnreachable) as error:
                outcome["errors"].append(type(error).__name__)
                outcome["slowest_failure"] = max(outcome["slowest_failure"], time.monotonic() - started)

    workers = [threading.Thread(target=loop, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(seconds + 60)
        assert not worker.is_alive(), "a call hung"
    return outcome


def test_database_stopped_mid_load_gives_unavailable_then_recovers(start_ledger, own_database):
    server = start_ledger(**own_database.env, MYSQL_CONNECT_TIMEOUT="2", MYSQL_READ_TIMEOUT="3")
    with server.client(pool_size=8, retries=2, deadline=4, timeout=5) as client:
        accounts = [client.create_account(f"outage-{n}").id for n in range(6)]
        for account in accounts:
            client.deposit(account, 10_000)

        def restart_database() -> None:
            time.sleep(1)
            own_database.stop()
            time.sleep(2)
            own_database.start()

        restarter = threading.Thread(target=restart_database)
        restarter.start()
        during = run_transfers(client, accounts, seconds=5)
        restarter.join()
        wait_for(lambda: client.health().database, 10, "the service to reconnect")
        after = run_transfers(client, accounts, seconds=1)
    assert "Unavailable" in during["errors"] or "ServerUnreachable" in during["errors"]
    assert during["slowest_failure"] < 15
    assert after["errors"] == [] and after["acknowledged"]
    assert_ledger_invariant(own_database.env)


def test_sigterm_under_load_commits_or_rolls_back_whole_and_never_hangs(start_ledger, database):
    server = start_ledger(THRIFT_DRAIN_TIMEOUT="5")
    with server.client(pool_size=8, retries=0, timeout=10) as client:
        accounts = [client.create_account(f"sigterm-{n}").id for n in range(6)]
        for account in accounts:
            client.deposit(account, 10_000)

        def stop_server() -> None:
            time.sleep(1)
            server.process.send_signal(signal.SIGTERM)

        stopper = threading.Thread(target=stop_server)
        stopper.start()
        outcome = run_transfers(client, accounts, seconds=3)
        stopper.join()
    assert server.process.wait(15) == 0
    assert outcome["acknowledged"] and outcome["errors"]  # the stop really happened mid-load
    assert_ledger_invariant(database)


def test_kill_9_mid_transfers_leaves_no_half_transfer(start_ledger, database):
    server = start_ledger()
    with server.client(pool_size=8, retries=30, deadline=60) as client:
        accounts = [client.create_account(f"kill-{n}").id for n in range(6)]
        for account in accounts:
            client.deposit(account, 10_000)
        balances_before = sum(client.get_account(a).balance for a in accounts)

        def kill_and_restart() -> None:
            time.sleep(1)
            server.stop(signal.SIGKILL)
            start_ledger(port=server.port)

        killer = threading.Thread(target=kill_and_restart)
        killer.start()
        outcome = run_transfers(client, accounts, seconds=3)
        killer.join()
        assert outcome["errors"] == []
        assert sum(client.get_account(a).balance for a in accounts) == balances_before
    assert_ledger_invariant(database)


def test_settings_repr_and_logs_never_show_the_database_password(start_ledger, database):
    sql(database, "CREATE USER IF NOT EXISTS 'pw_user'@'%' IDENTIFIED BY 'Hunter2-secret'")
    sql(database, f"GRANT ALL ON `{database['MYSQL_DATABASE']}`.* TO 'pw_user'@'%'")
    env = {**database, "MYSQL_USER": "pw_user", "MYSQL_PASSWORD": "Hunter2-secret", "LOG_LEVEL": "DEBUG"}
    assert "Hunter2-secret" not in repr(settings_module.load(env))
    server = start_ledger(**env)
    with server.client() as client:
        client.create_account("secret keeper")
    assert server.stop() == 0
    assert "Hunter2-secret" not in server.log()


# TLS ---------------------------------------------------------------------------------------------


def _certificate(subject: str, issuer_key, issuer_name, key, *, ca: bool, hosts=(), expired=False):
    now = datetime.datetime.now(datetime.UTC)
    start, end = (
        (now - datetime.timedelta(days=30), now - datetime.timedelta(days=1))
        if expired
        else (
            now - datetime.timedelta(days=1),
            now + datetime.timedelta(days=30),
        )
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if hosts:
        names = [x509.DNSName(h) if isinstance(h, str) else x509.IPAddress(h) for h in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, str]:
    """A throwaway CA, another CA, and server/client certificates, as PEM file paths."""
    directory = tmp_path_factory.mktemp("pki")
    files = {}

    def write(name: str, certificate, key) -> None:
        (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (directory / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        files[name] = str(directory / f"{name}.pem")
        files[name + "_key"] = str(directory / f"{name}.key")

    for ca_name in ("ca", "other_ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        write(ca_name, _certificate(ca_name, key, None, key, ca=True), key)
        files[ca_name + "_objects"] = (key, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_name)]))
    ca_key, ca_name = files.pop("ca_objects")
    files.pop("other_ca_objects")
    for name, hosts, expired in (
        ("server", ["localhost"], False),
        ("expired", ["localhost"], True),
        ("client", [], False),
        ("database", [ipaddress.ip_address("127.0.0.1")], False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _certificate(name, ca_key, ca_name, key, ca=False, hosts=hosts, expired=expired), key)
    return files


@pytest.fixture(scope="module")
def tls_ledger(pki, database, tmp_path_factory):
    """A server that requires TLS and a client certificate signed by the test CA."""
    env = {
        **database,
        "THRIFT_TLS_CERT": pki["server"],
        "THRIFT_TLS_KEY": pki["server_key"],
        "THRIFT_TLS_CLIENT_CA": pki["ca"],
        "THRIFT_READ_TIMEOUT": "2",
    }
    process = LedgerProcess(env, tmp_path_factory.mktemp("tls") / "server.log", ready=False)
    wait_for(lambda: _tls_answers(process, pki), 30, "the TLS server")
    yield process
    assert process.stop() == 0


def _tls_answers(process, pki) -> bool:
    try:
        with _tls_client(process.port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
            return client.ping() == "pong"
    except ServerUnreachable:
        return False


def _tls_client(port: int, context: ssl.SSLContext, host: str = "localhost") -> LedgerClient:
    return LedgerClient(f"{host}:{port}", tls=context, retries=0, timeout=5)


def test_tls_client_with_the_right_ca_and_certificate_is_served(tls_ledger, pki):
    with _tls_client(tls_ledger.port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
        account = client.create_account("over TLS 🔒")
        assert client.get_account(account.id).owner == "over TLS 🔒"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong CA", "certificate verify failed"),
        ("wrong hostname", "certificate verify failed"),
        ("no client certificate", None),
    ],
)
def test_tls_refuses_what_it_must(tls_ledger, pki, case, expected):
    context = {
        "wrong CA": lambda: tls_context(pki["other_ca"], pki["client"], pki["client_key"]),
        "wrong hostname": lambda: tls_context(pki["ca"], pki["client"], pki["client_key"]),
        "no client certificate": lambda: tls_context(pki["ca"]),
    }[case]()
    host = "127.0.0.1" if case == "wrong hostname" else "localhost"
    with pytest.raises(ServerUnreachable, match=expected), _tls_client(tls_ledger.port, context, host) as client:
        client.ping()


def test_tls_refuses_an_expired_server_certificate(start_ledger, pki):
    server = start_ledger(THRIFT_TLS_CERT=pki["expired"], THRIFT_TLS_KEY=pki["expired_key"], ready=False)
    wait_for(lambda: "serving Ledger" in server.log(), 30, "the server")
    with pytest.raises(ServerUnreachable, match="expired"), _tls_client(server.port, tls_context(pki["ca"])) as client:
        client.ping()


def test_plain_text_client_is_refused_by_a_tls_server(tls_ledger):
    with pytest.raises(ServerUnreachable), LedgerClient(f"127.0.0.1:{tls_ledger.port}", retries=0, timeout=5) as plain:
        plain.ping()


def test_stalled_tls_handshakes_do_not_block_other_clients(tls_ledger, pki):
    stalled = [socket.create_connection(("127.0.0.1", tls_ledger.port)) for _ in range(50)]
    try:
        with _tls_client(tls_ledger.port, tls_context(pki["ca"], pki["client"], pki["client_key"])) as client:
            assert client.ping() == "pong"
        for sock in stalled:  # closed after THRIFT_READ_TIMEOUT
            sock.settimeout(10)
            assert sock.recv(1) == b""
    finally:
        for sock in stalled:
            sock.close()


def test_server_reaches_mysql_over_tls_when_the_database_requires_it(start_ledger, own_database, pki):
    own_database.stop()
    own_database.start(f"--ssl-ca={pki['ca']}", f"--ssl-cert={pki['database']}", f"--ssl-key={pki['database_key']}")
    sql(own_database.env, "CREATE USER 'tls_only'@'%' REQUIRE SSL")
    sql(own_database.env, f"GRANT ALL ON `{own_database.database}`.* TO 'tls_only'@'%'")
    env = {**own_database.env, "MYSQL_USER": "tls_only"}
    with pytest.raises(RuntimeError, match="cannot migrate"):
        start_ledger(**env)  # this user is refused over plain TCP
    server = start_ledger(**env, MYSQL_SSL_CA=pki["ca"])
    with server.client() as client:
        assert client.health().database is True
        assert client.create_account("tls to mysql").owner == "tls to mysql"
