"""Walking every RPC of an IDL: arguments from the edges of each type, and what a call may answer.

A service keeps its contract when every call answers a result or an
exception its method declares, never INTERNAL_ERROR: `answer()` says which.
"""

import uuid
from pathlib import Path

import thriftpy2
from hypothesis import strategies as st
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException, TType

from servicekit.base import BASE_METHODS, base_module
from servicekit.errors import ContractError

INTEGER_BITS = {TType.BYTE: 8, TType.I16: 16, TType.I32: 32, TType.I64: 64}


def service_in(idl: Path) -> type:
    """The one service an IDL file defines that extends the kit's BaseService."""
    module = thriftpy2.load(str(idl), module_name=f"{idl.stem}_under_test_thrift")
    (service,) = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and hasattr(value, "thrift_services") and _extends_base(value)
    ]
    return service


def _extends_base(service: type) -> bool:
    try:
        base_module(service)
    except ContractError:
        return False
    return True


def methods(service: type) -> list[str]:
    """The service's own RPCs (ping and health are the kit's)."""
    return [method for method in service.thrift_services if method not in BASE_METHODS]


def _specs(service: type, method: str) -> list[tuple]:
    return [spec for _, spec in sorted(getattr(service, method + "_args").thrift_spec.items())]


def _edge_values(spec: tuple) -> st.SearchStrategy:
    kind, name = spec[0], spec[1]
    if kind in INTEGER_BITS:
        limit = 2 ** (INTEGER_BITS[kind] - 1)
        edges = [v for v in (0, 1, -1, 2, 1000, 10**12, 10**15 + 1, limit - 1, -limit) if -limit <= v < limit]
        return st.sampled_from(edges) | st.integers(-limit, limit - 1)
    if kind == TType.STRING:
        edges = ["", " ", "x", "x" * 65, "x" * 201, "x" * 10_000, "tab\there", "nul\x00", "🦄" * 70, "%s';--"]
        if name == "request_id":
            edges += [uuid.uuid4().hex, "has space"]
        if name == "cursor":
            edges += ["forged", "YWNjb3VudHM6MDox", "!!!"]
        return st.sampled_from(edges) | st.text(max_size=50)
    if kind == TType.DOUBLE:
        return st.sampled_from([0.0, -1.0, 0.001])
    if kind == TType.BOOL:
        return st.booleans()
    raise NotImplementedError(f"no edge values for argument {name} of type {kind}")


def arguments(service: type, method: str) -> st.SearchStrategy[tuple]:
    """Argument tuples for `method` built from the edges of each argument's type."""
    return st.tuples(*(_edge_values(spec) for spec in _specs(service, method)))


def plausible_arguments(service: type, method: str) -> tuple:
    """Arguments a well-behaved caller might send: small distinct numbers, a fresh id, an empty cursor, text."""
    values = {"request_id": uuid.uuid4().hex, "cursor": "", "limit": 10}
    plain = {TType.STRING: "text", TType.DOUBLE: 0.0, TType.BOOL: False}
    return tuple(
        values.get(spec[1], position + 1 if spec[0] in INTEGER_BITS else plain[spec[0]])
        for position, spec in enumerate(_specs(service, method))
    )


def declared(service: type, method: str) -> tuple[type, ...]:
    result = getattr(service, method + "_result")
    return tuple(spec[2] for spec in result.thrift_spec.values() if spec[1] != "success")


def answer(client, method: str, args: tuple) -> str:
    """ "ok", or the name of the declared exception the call raised; anything else fails the test."""
    try:
        client.call(method, *args)
    except declared(client.service, method) as error:
        return type(error).__name__
    except TApplicationException as error:
        raise AssertionError(f"{method}{args!r} answered {error} instead of a declared error") from None
    return "ok"


class StockClient:
    """thriftpy2's make_client with its defaults (unframed binary), called as `answer()` calls a client.

    Unlike PooledClient it checks nothing: an argument given as None is left
    out of the message, as stock clients do.
    """

    def __init__(self, service: type, port: int) -> None:
        self.service = service
        self.client = make_client(service, "127.0.0.1", port, timeout=10_000)  # ms

    def call(self, method: str, *args: object) -> object:
        return getattr(self.client, method)(*args)

    def close(self) -> None:
        self.client.close()
