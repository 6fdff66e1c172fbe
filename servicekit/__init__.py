"""servicekit: what every Thrift service on MySQL keeps unchanged.

The thread-pool server and its pre-fork supervisor, the wire checks, the
error-mapping processor, idempotent writes, migrations, settings, logs and
metrics, and a pooled, retrying client. A service brings its IDL (which
extends base.thrift), its handlers, its SQL and its typed client.
"""
