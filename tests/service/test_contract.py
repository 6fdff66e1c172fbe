"""The Ledger keeps its IDL: every RPC, whatever it is sent, answers a result or a declared error."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import LedgerClient, ledger_thrift
from helpers.contract import answer, arguments, methods, plausible_arguments

Ledger = ledger_thrift.Ledger


@pytest.mark.parametrize("method", methods(Ledger))
def test_every_rpc_answers_edge_arguments_with_a_result_or_a_declared_error(ledger, method):
    with LedgerClient(f"127.0.0.1:{ledger.port}", retries=0) as client:
        answers = set()

        @settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(args=arguments(Ledger, method))
        def call(args: tuple) -> None:
            answers.add(answer(client, method, args))

        call()
    assert answers - {"ok"}, "edge arguments should find at least one declared error"
    assert "internal_error" not in ledger.log()


def test_every_rpc_answers_unavailable_while_the_database_is_down(start_ledger, own_database):
    server = start_ledger(**own_database.env, MYSQL_CONNECT_TIMEOUT="1")
    own_database.stop()
    with server.client(retries=0) as client:
        answers = {method: answer(client, method, plausible_arguments(Ledger, method)) for method in methods(Ledger)}
    assert answers == dict.fromkeys(methods(Ledger), "Unavailable")


def test_an_argument_of_the_wrong_type_never_leaves_the_library(client):
    with pytest.raises(TypeError):
        client.deposit(1, 5.5)
    with pytest.raises(TypeError):
        client.deposit(1, True)
    with pytest.raises(TypeError):
        client.get_account("1")
    with pytest.raises(ValueError):
        client.withdraw(1, 2**63)


@settings(max_examples=300)
@given(
    method=st.sampled_from(methods(Ledger)),
    bad=st.one_of(
        st.floats(),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
        st.binary(max_size=3),
        st.lists(st.integers(), max_size=2),
    ),
    position=st.integers(0, 3),
)
def test_every_client_method_refuses_wrong_types_before_a_byte_is_sent(method, bad, position):
    client = LedgerClient("127.0.0.1:9", retries=0, deadline=0.5)  # nothing listens: any byte sent would fail
    args = list(plausible_arguments(Ledger, method))
    position %= len(args)
    spec_type = type(args[position])
    if isinstance(bad, spec_type) and not isinstance(bad, bool):
        return  # the right type after all
    args[position] = bad
    with pytest.raises((TypeError, ValueError)):
        client.call(method, *args)


@settings(max_examples=200)
@given(
    method=st.sampled_from(methods(Ledger)),
    position=st.integers(0, 3),
    big=st.integers(2**63, 2**80) | st.integers(-(2**80), -(2**63) - 1),
)
def test_every_client_method_refuses_integers_out_of_range(method, position, big):
    client = LedgerClient("127.0.0.1:9", retries=0, deadline=0.5)
    args = list(plausible_arguments(Ledger, method))
    integers = [i for i, value in enumerate(args) if type(value) is int]
    if not integers:
        return
    args[integers[position % len(integers)]] = big
    with pytest.raises(ValueError, match="range"):
        client.call(method, *args)
