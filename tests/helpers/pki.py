"""A throwaway certificate authority for the TLS tests: CAs, server, client and database certificates."""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer_key, issuer: str | None, key, *, ca: bool, hosts=(), expired=False):
    now = datetime.datetime.now(datetime.UTC)
    day = datetime.timedelta(days=1)
    start, end = (now - 30 * day, now - day) if expired else (now - day, now + 30 * day)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
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


def make_pki(directory: Path) -> dict[str, str]:
    """PEM files in `directory`: name -> path, and name + "_key" -> its key.

    ca and other_ca; signed by ca: server (localhost), expired (localhost),
    client, and database (127.0.0.1); and encrypted_key, server's key with a passphrase.
    """
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

    ca_key = ec.generate_private_key(ec.SECP256R1())
    write("ca", _certificate("ca", ca_key, None, ca_key, ca=True), ca_key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    write("other_ca", _certificate("other_ca", other_key, None, other_key, ca=True), other_key)
    for name, hosts, expired in (
        ("server", ["localhost"], False),
        ("expired", ["localhost"], True),
        ("client", [], False),
        ("database", [ipaddress.ip_address("127.0.0.1")], False),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        write(name, _certificate(name, ca_key, "ca", key, ca=False, hosts=hosts, expired=expired), key)
        if name == "server":
            encrypted = serialization.BestAvailableEncryption(b"passphrase")
            (directory / "encrypted.key").write_bytes(
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted)
            )
            files["encrypted_key"] = str(directory / "encrypted.key")
    return files
