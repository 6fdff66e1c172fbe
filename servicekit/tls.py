"""The client side's TLS settings: what client.py, PooledClient and the probe (probe.py) connect with.

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
        with _naming(f"{cert_file} and {key_file}" if key_file else cert_file):
            context.load_cert_chain(cert_file, key_file or None)
    return context


@contextmanager
def _naming(files: str) -> Iterator[None]:
    """Re-raise an OSError (ssl.SSLError is one), of the same type, with the files it is about in its
    strerror: OpenSSL's own says only "PEM lib"."""
    try:
        yield
    except OSError as error:
        raise type(error)(error.errno, f"{files}: {error.strerror or error}") from None
