"""The client side's TLS settings: what client.py, PooledClient and the probe (probe.py) connect with; and the
loading of a certificate and its key, which the server (startup.py) shares.

Imports nothing but the standard library, so that a container probe stays cheap.
"""

import ssl
from collections.abc import Iterator
from contextlib import contextmanager


def tls_context(ca_file: str, cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """Client TLS settings: verify the server's chain against `ca_file` and its
    host name (thriftpy2's own TSSLSocket turns hostname checking off), and
    present a client certificate if one is given."""
    with _naming(ca_file):
        context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        load_key_pair(context, cert_file, key_file)
    return context


def load_key_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load a certificate (chain) and its key into `context`; OSError naming the files if they cannot be.

    A key with a passphrase is refused: OpenSSL would otherwise ask for it on the terminal, and a server,
    a container probe or a client library waits there for an answer no one gives (or fails with "Invalid
    argument" when no terminal is attached).
    """
    with _naming(f"{cert_file} and {key_file}" if key_file else cert_file):
        context.load_cert_chain(cert_file, key_file or None, password=_no_passphrase)


def load_ca(context: ssl.SSLContext, ca_file: str) -> None:
    """Trust the CA certificates in `ca_file`; OSError naming the file if it cannot be loaded."""
    with _naming(ca_file):
        context.load_verify_locations(ca_file)


def _no_passphrase() -> str:
    raise ssl.SSLError(None, "the key has a passphrase: give it without one (openssl pkey -in KEY -out PLAIN_KEY)")


@contextmanager
def _naming(files: str) -> Iterator[None]:
    """Re-raise an OSError (ssl.SSLError is one), of the same type, with the files it is about in its
    strerror: OpenSSL's own says only "PEM lib"."""
    try:
        yield
    except OSError as error:
        raise type(error)(error.errno, f"{files}: {error.strerror or error}") from None
