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
from servicekit.wire import BINARY, element_type, field_type

INTEGER_BITS = {TType.BYTE: 8, TType.I16: 16, TType.I32: 32, TType.I64: 64}
MAX_DEPTH = 3  # struct within struct: past this, a struct with every field unset
PLAUSIBLE_BY_NAME = {"cursor": "", "limit": 10}  # the first page, of a size every service accepts


def service_in(idl: Path) -> type:
    """The one service an IDL file defines that extends the kit's BaseService, and that no other service of the
    file extends (`service Inventory extends Catalog`, where Catalog extends base.BaseService: Inventory)."""
    module = thriftpy2.load(str(idl), module_name=f"{idl.stem}_under_test_thrift")
    services = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and hasattr(value, "thrift_services") and _extends_base(value)
    ]
    served = [
        service
        for service in services
        if not any(other is not service and issubclass(other, service) for other in services)
    ]
    if len(served) != 1:
        names = ", ".join(service.__name__ for service in served)
        raise ContractError(f"{idl} must define one service that extends base.BaseService, not {names or 'none'}")
    return served[0]


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


def _edge_values(kind: int, held: object, name: str, depth: int = 0) -> st.SearchStrategy:
    """Values of Thrift type `kind` (`held`: a struct's class, or a container's element types) from its edges."""
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
    if kind == BINARY:
        return st.sampled_from([b"", b"\x00", b"\xff\xfe", bytes(range(256))]) | st.binary(max_size=50)
    if kind == TType.DOUBLE:
        return st.sampled_from([0.0, -1.0, 0.001])
    if kind == TType.BOOL:
        return st.booleans()
    if kind in (TType.LIST, TType.SET):
        items = _edge_values(*element_type(held), name, depth + 1)
        return st.lists(items, max_size=4) if kind == TType.LIST else st.sets(items, max_size=4)
    if kind == TType.MAP:
        keys, items = (_edge_values(*element_type(part), name, depth + 1) for part in held)
        return st.dictionaries(keys, items, max_size=4)
    if kind == TType.STRUCT:
        if depth > MAX_DEPTH:  # a struct that holds itself
            return st.builds(held)
        fields = {
            spec[1]: st.none() | _edge_values(*field_type(spec), spec[1], depth + 1)
            for spec in held.thrift_spec.values()
        }
        return st.builds(held, **fields)
    raise NotImplementedError(f"no edge values for argument {name} of type {kind}")


def arguments(service: type, method: str) -> st.SearchStrategy[tuple]:
    """Argument tuples for `method` built from the edges of each argument's type."""
    return st.tuples(*(_edge_values(*field_type(spec), spec[1]) for spec in _specs(service, method)))


def plausible_arguments(service: type, method: str) -> tuple:
    """Arguments a well-behaved caller might send: small distinct numbers, a fresh id, an empty cursor, text,
    and containers of one such value each (an empty one may be answered without the database)."""
    return tuple(
        _plausible(*field_type(spec), spec[1], position + 1) for position, spec in enumerate(_specs(service, method))
    )


def _plausible(kind: int, held: object, name: str, number: int) -> object:
    if name == "request_id" and kind == TType.STRING:
        return uuid.uuid4().hex  # fresh each call: a repeat with other arguments would be a Conflict
    if name in PLAUSIBLE_BY_NAME and kind in (TType.STRING, *INTEGER_BITS):
        return PLAUSIBLE_BY_NAME[name]
    if kind in INTEGER_BITS:
        return number
    if kind in (TType.LIST, TType.SET):
        item = _plausible(*element_type(held), name, number)
        return [item] if kind == TType.LIST else {item}
    if kind == TType.MAP:
        return {_plausible(*element_type(held[0]), name, number): _plausible(*element_type(held[1]), name, number)}
    if kind == TType.STRUCT:
        return held(**{spec[1]: _plausible(*field_type(spec), spec[1], number) for spec in held.thrift_spec.values()})
    return {TType.STRING: "text", BINARY: b"bytes", TType.DOUBLE: 0.0, TType.BOOL: False}[kind]


def declared(service: type, method: str) -> tuple[type, ...]:
    result = getattr(service, method + "_result")
    return tuple(spec[2] for spec in result.thrift_spec.values() if spec[1] != "success")


def answer(client, method: str, args: tuple, log_path: Path | None = None) -> str:
    """ "ok", or the name of the declared exception the call raised; anything else fails the test, saying
    what to change (and where the server's traceback is: `log_path`)."""
    try:
        client.call(method, *args)
    except declared(client.service, method) as error:
        return type(error).__name__
    except TApplicationException as error:
        raise AssertionError(_undeclared(client.service, method, args, error, log_path)) from None
    return "ok"


def _undeclared(service: type, method: str, args: tuple, error: Exception, log_path: Path | None) -> str:
    """Why a call answered INTERNAL_ERROR, and what the handler must do instead."""
    where = f"in {log_path}" if log_path else "in the server's log"
    text = (
        f"{method}{args!r} answered {error} instead of a declared error: its handler raised an exception"
        f" service.thrift does not declare for {method} (the traceback is {where})"
    )
    left_out = [spec[1] for spec, value in zip(_specs(service, method), args, strict=True) if value is None]
    if left_out:
        were = "was" if len(left_out) == 1 else "were"
        text += (
            f". {', '.join(left_out)} {were} None: a stock Thrift client leaves out an argument given as None, and"
            " the handler gets None for it; answer that with a declared error too (InvalidArgument for a write)"
        )
    return text


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
