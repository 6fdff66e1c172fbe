"""Helpers the tests import as modules: processes, MySQL, raw Thrift bytes, TLS, metrics, load."""
