"""The service keeps its IDL: every RPC, whatever it is sent, answers a result or a declared error.

Generic over service.thrift: it walks every RPC the service defines, with
arguments from the edges of each type, with the database up and down.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thriftpy2.thrift import TApplicationException

from helpers.contract import StockClient, answer, arguments, methods, plausible_arguments, service_in
from helpers.processes import ROOT
from servicekit.base import BASE_THRIFT
from servicekit.client import PooledClient, check_arguments

SERVICE = service_in(ROOT / "service.thrift")


@pytest.mark.parametrize("method", methods(SERVICE))
def test_every_rpc_answers_edge_arguments_with_a_result_or_a_declared_error(server, method):
    with PooledClient(SERVICE, server.address, retries=0) as client:

        @settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(args=arguments(SERVICE, method))
        def call(args: tuple) -> None:
            answer(client, method, args, server.log_path)  # fails the test on INTERNAL_ERROR

        call()


@pytest.mark.parametrize("method", methods(SERVICE))
def test_every_rpc_answers_a_stock_client_that_leaves_each_argument_out(server, method):
    client = StockClient(SERVICE, server.port)
    try:
        for left_out in range(len(plausible_arguments(SERVICE, method))):
            args = list(plausible_arguments(SERVICE, method))  # a fresh request_id each time
            args[left_out] = None
            answer(client, method, tuple(args), server.log_path)  # fails the test on INTERNAL_ERROR
    finally:
        client.close()


def test_a_database_outage_is_unavailable_for_every_rpc_that_reached_it(start_server, own_database):
    server = start_server(**own_database.env, MYSQL_CONNECT_TIMEOUT="1")
    calls = {method: plausible_arguments(SERVICE, method) for method in methods(SERVICE)}
    with PooledClient(SERVICE, server.address, retries=0) as client:
        up = {method: answer(client, method, args) for method, args in calls.items()}
        own_database.stop()
        down = {method: answer(client, method, args) for method, args in calls.items()}
    # Only an argument refused before the database was reached may answer otherwise.
    reached = [method for method, outcome in up.items() if outcome != "InvalidArgument"]
    assert reached, up
    assert {method: down[method] for method in reached} == dict.fromkeys(reached, "Unavailable")


@settings(max_examples=300)
@given(
    method=st.sampled_from(methods(SERVICE)),
    bad=st.one_of(
        st.floats(), st.booleans(), st.text(max_size=3), st.none(), st.binary(max_size=3), st.lists(st.integers())
    ),
    position=st.integers(0, 5),
)
def test_the_client_refuses_wrong_types_before_a_byte_is_sent(method, bad, position):
    client = PooledClient(SERVICE, "127.0.0.1:9", retries=0, deadline=0.5)  # nothing listens: a sent byte would fail
    args = list(plausible_arguments(SERVICE, method))
    if not args:
        return
    position %= len(args)
    if _same_type(bad, args[position]):
        return  # the right type after all
    args[position] = bad
    with pytest.raises((TypeError, ValueError)):
        client.call(method, *args)


def _same_type(value: object, plausible: object) -> bool:
    """Whether `value` is of the type of `plausible`, an argument's, as the client takes it: a bool for a bool
    argument only (to Python it is an int too), and a list for a set too."""
    if isinstance(value, bool) or isinstance(plausible, bool):
        return isinstance(value, bool) and isinstance(plausible, bool)
    return isinstance(value, type(plausible)) or (isinstance(plausible, set) and isinstance(value, list))


@settings(max_examples=200)
@given(
    method=st.sampled_from(methods(SERVICE)),
    position=st.integers(0, 5),
    big=st.integers(2**63, 2**80) | st.integers(-(2**80), -(2**63) - 1),
)
def test_the_client_refuses_integers_out_of_range(method, position, big):
    client = PooledClient(SERVICE, "127.0.0.1:9", retries=0, deadline=0.5)
    args = list(plausible_arguments(SERVICE, method))
    integers = [i for i, value in enumerate(args) if type(value) is int]
    if not integers:
        return
    args[integers[position % len(integers)]] = big
    with pytest.raises(ValueError, match="range"):
        client.call(method, *args)


# A service of your own may take containers and structs: the walk above builds those too.
CONTAINERS = """include "{base}"
struct Note {{ 1: string title, 2: list<string> tags, 3: map<string, i64> counts, 4: set<i32> marks }}
service Notes extends base.BaseService {{
  list<Note> add(1: Note note, 2: list<i64> ids, 3: map<i32, list<Note>> groups, 4: string request_id)
    throws (1: base.Unavailable unavailable),
}}
"""


def test_arguments_of_container_and_struct_types_are_built_as_the_idl_declares_them(tmp_path):
    idl = tmp_path / "notes.thrift"
    idl.write_text(CONTAINERS.format(base=BASE_THRIFT))
    notes = service_in(idl)
    specs = list(notes.add_args.thrift_spec.values())
    check_arguments("add", specs, plausible_arguments(notes, "add"))  # raises unless every value fits the IDL

    @settings(max_examples=50)
    @given(args=arguments(notes, "add"))
    def fit(args: tuple) -> None:
        check_arguments("add", specs, args)

    fit()


class _FailingClient:
    """A server whose handler raised what its IDL does not declare: every call answers INTERNAL_ERROR."""

    def __init__(self, service: type) -> None:
        self.service = service

    def call(self, method: str, *args: object) -> None:
        raise TApplicationException(TApplicationException.INTERNAL_ERROR, "internal error")


def test_an_undeclared_error_for_an_argument_left_out_says_what_the_handler_must_do(tmp_path):
    idl = tmp_path / "notes.thrift"
    idl.write_text(CONTAINERS.format(base=BASE_THRIFT))
    args = (None, [1], {}, "request-1")
    with pytest.raises(AssertionError) as failure:
        answer(_FailingClient(service_in(idl)), "add", args, tmp_path / "server.log")
    assert f"the traceback is in {tmp_path / 'server.log'}" in str(failure.value)
    assert "note was None: a stock Thrift client leaves out an argument given as None" in str(failure.value)
    assert "InvalidArgument" in str(failure.value)


# A service of your own may extend a base service of its own, and take binary, bool and set arguments.
EXTENDED = """include "{base}"
service Catalog extends base.BaseService {{ i64 count() throws (1: base.Unavailable unavailable) }}
service Shop extends Catalog {{
  void tag(1: binary photo, 2: bool archived, 3: set<string> labels) throws (1: base.Unavailable unavailable),
}}
"""


def test_the_service_checked_is_the_one_no_other_extends_and_every_argument_type_is_built(tmp_path):
    idl = tmp_path / "shop.thrift"
    idl.write_text(EXTENDED.format(base=BASE_THRIFT))
    shop = service_in(idl)
    assert shop.__name__ == "Shop"
    assert methods(shop) == ["tag", "count"]
    specs = list(shop.tag_args.thrift_spec.values())
    check_arguments("tag", specs, plausible_arguments(shop, "tag"))

    @settings(max_examples=50)
    @given(args=arguments(shop, "tag"))
    def fit(args: tuple) -> None:
        check_arguments("tag", specs, args)

    fit()


@pytest.mark.parametrize(
    ("value", "plausible"), [(False, True), (True, False), ([], {"text"}), (["text"], {"text"}), (b"", b"bytes")]
)
def test_a_value_of_the_arguments_own_type_is_not_taken_for_a_wrong_one(value, plausible):
    assert _same_type(value, plausible)


@pytest.mark.parametrize(("value", "plausible"), [(1, True), (True, 1), (0.5, 1), ("", b"bytes"), ([1], "text")])
def test_a_value_of_another_type_is_taken_for_a_wrong_one(value, plausible):
    assert not _same_type(value, plausible)
