"""check_contract: what the kit needs from a service's IDL and handler, found at start-up."""

import itertools
import re

import pytest
import thriftpy2

from servicekit.base import BASE_THRIFT
from servicekit.errors import ContractError
from servicekit.processor import check_contract

_names = itertools.count()


def service(tmp_path, methods: str, extends: bool = True) -> type:
    """A thriftpy2 service named Probe with `methods`, extending base.thrift unless told not to."""
    path = tmp_path / f"probe{next(_names)}.thrift"
    header = f'include "{BASE_THRIFT}"\n' if extends else ""
    parent = " extends base.BaseService" if extends else ""
    path.write_text(f"{header}exception Missing {{ 1: string message }}\nservice Probe{parent} {{\n{methods}\n}}\n")
    return thriftpy2.load(str(path), module_name=path.stem + "_thrift").Probe


class Handler:
    def get(self, key):
        return key

    def put(self, key, request_id):
        return key

    def page(self, limit, cursor):
        return []


GET = "i64 get(1: i64 key) throws (1: base.Unavailable unavailable)"
PUT = (
    "i64 put(1: i64 key, 2: string request_id)"
    " throws (1: base.InvalidArgument invalid, 2: base.Conflict conflict, 3: base.Unavailable unavailable)"
)
PAGE = "list<i64> page(1: i32 limit, 2: string cursor) throws (1: base.InvalidArgument i, 2: base.Unavailable u)"


def test_a_service_that_keeps_every_rule_passes(tmp_path):
    check_contract(service(tmp_path, f"{GET},\n{PUT},\n{PAGE}"), Handler())


@pytest.mark.parametrize(
    ("methods", "problem"),
    [
        ("i64 get(1: i64 key)", "get does not declare base.Unavailable"),
        (
            "i64 put(1: i64 key, 2: string request_id) throws (1: base.Unavailable unavailable)",
            "put does not declare base.InvalidArgument; put does not declare base.Conflict",
        ),
        (
            "list<i64> page(1: i32 limit, 2: string cursor) throws (1: base.Unavailable unavailable)",
            "page does not declare base.InvalidArgument",
        ),
        (f"{GET},\ni64 gone(1: i64 key) throws (1: base.Unavailable unavailable)", "Handler has no method gone"),
        # thriftpy2 takes a oneway with throws, which Apache Thrift's compiler refuses; either way the engine
        # would drop every call of it, its handler method never run.
        *(
            (
                f"{GET},\noneway void touch(1: i64 key){throws}",
                "touch is oneway, and the kit answers every call (it drops one-way calls):"
                " make it a void method that declares base.Unavailable",
            )
            for throws in ("", " throws (1: base.Unavailable unavailable)")
        ),
    ],
)
def test_each_broken_rule_is_named(tmp_path, methods, problem):
    with pytest.raises(ContractError) as error:
        check_contract(service(tmp_path, methods), Handler())
    assert str(error.value) == problem


@pytest.mark.parametrize(
    "put",
    [lambda self, key: key, lambda self, key, note, request_id: key, lambda self, key, *, request_id: key],
    ids=["one-short", "one-more", "keyword-only"],
)
def test_a_handler_method_that_cannot_take_the_idls_arguments_is_named(tmp_path, put):
    # It would start, then answer every call of put with INTERNAL_ERROR.
    handler = type("Handler", (Handler,), {"put": put})()
    with pytest.raises(ContractError) as error:
        check_contract(service(tmp_path, f"{GET},\n{PUT}"), handler)
    assert str(error.value) == "Handler.put does not take the IDL's arguments (key, request_id)"


def test_a_handler_method_may_name_its_parameters_its_own_way_or_take_more_with_defaults(tmp_path):
    handler = type("Handler", (Handler,), {"put": lambda self, sku, request_id, note="": sku})()
    check_contract(service(tmp_path, f"{GET},\n{PUT}"), handler)


def test_a_handler_class_given_for_its_object_is_named_as_such(tmp_path):
    # server.py's `NotesHandler` for `NotesHandler()`: each method, unbound, would take one argument short.
    with pytest.raises(ContractError) as error:
        check_contract(service(tmp_path, f"{GET},\n{PUT}"), Handler)
    assert str(error.value) == "the handler is the class Handler, not one of its objects: pass Handler()"


def test_a_handler_method_without_a_signature_to_read_is_taken_as_it_is(tmp_path):
    # A method written in C (a builtin, Cython without binding) has none: refusing it would stop a working server.
    handler = type("Handler", (Handler,), {"put": staticmethod(max)})()
    check_contract(service(tmp_path, f"{GET},\n{PUT}"), handler)


def test_a_write_method_name_must_fit_the_write_record(tmp_path):
    name = "w" * 256
    methods = PUT.replace("put(", f"{name}(")
    handler = type("LongHandler", (), {name: lambda self, key, request_id: key})()
    with pytest.raises(ContractError, match=re.escape(f"write method {name} has a name longer than 255 characters")):
        check_contract(service(tmp_path, methods), handler)


def test_a_service_must_extend_base_service(tmp_path):
    with pytest.raises(ContractError, match=r"does not extend base\.BaseService"):
        check_contract(service(tmp_path, "i64 get(1: i64 key)", extends=False), Handler())
