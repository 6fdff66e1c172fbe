"""What a handler receives and what its client gets back, for IDLs the Counters service does not cover."""

import logging
import threading

import pytest
import thriftpy2
from thriftpy2.rpc import make_client
from thriftpy2.thrift import TApplicationException

from servicekit.base import BASE_THRIFT
from servicekit.client import PooledClient
from servicekit.processor import GuardedProcessor
from servicekit.thread_pool_server import TThreadPoolServer
from tools.throwaway_db import free_port

IDL = """include "{base}"
struct Note {{ 1: list<string> tags, 2: map<string, string> labels }}
service Probe extends base.BaseService {{
  /** Field ids in another order than declared, as an evolved IDL may have them. */
  string pair(2: string second, 1: i64 first) throws (1: base.Unavailable unavailable),
  /** Its handler returns a string for an i64: found only when the reply is encoded. */
  i64 wrong_type() throws (1: base.Unavailable unavailable),
  /** Strings nested in a struct, a list and a map. */
  i64 count_tags(1: Note note) throws (1: base.Unavailable unavailable),
}}
"""


class ProbeHandler:
    def pair(self, second: str, first: int) -> str:
        return f"second={second} first={first}"

    def wrong_type(self) -> int:
        return "not a number"

    def count_tags(self, note) -> int:
        return len(note.tags) + len(note.labels)


@pytest.fixture
def probe_server(tmp_path):
    """A Probe server in this process: its service and port."""
    idl = tmp_path / "probe.thrift"
    idl.write_text(IDL.format(base=BASE_THRIFT))
    service = thriftpy2.load(str(idl), module_name="probe_thrift").Probe
    processor = GuardedProcessor(
        service, ProbeHandler(), version="1", is_serving=lambda: True, database_answers=lambda: True
    )
    server = TThreadPoolServer(processor, "127.0.0.1", free_port(), 2, 60, 10, 10, 65536, 100, 2**20)
    server.listen()
    serving = threading.Thread(target=server.serve)
    serving.start()
    yield service, server.address[1]
    server.close()
    serving.join(10)


@pytest.fixture
def probe(probe_server):
    """The kit's client of the Probe server."""
    service, port = probe_server
    with PooledClient(service, f"127.0.0.1:{port}", retries=0) as client:
        yield client


def test_arguments_arrive_in_the_order_the_idl_declares_them_whatever_their_ids(probe):
    assert probe.call("pair", "S", 1) == "second=S first=1"


def test_a_result_of_the_wrong_type_is_internal_error_and_the_connection_stays_usable(probe, caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(TApplicationException) as raised:
        probe.call("wrong_type")
    assert raised.value.type == TApplicationException.INTERNAL_ERROR
    assert "wrong_type returned a result service.thrift does not allow" in caplog.text
    assert "Traceback" in caplog.text
    assert probe.call("pair", "again", 2) == "second=again first=2"


UNDECODABLE = [{"tags": ["a", b"\xff"], "labels": {}}, {"tags": [], "labels": {"k": b"caf\xe9"}}]


@pytest.mark.parametrize("undecodable", UNDECODABLE, ids=str)
def test_a_string_that_is_not_utf_8_anywhere_in_the_arguments_is_answered_why_on_a_connection_still_in_step(
    probe_server, probe, caplog, undecodable
):
    service, port = probe_server
    note = service.count_tags_args.thrift_spec[1][2]  # the Note struct
    stock = make_client(service, "127.0.0.1", port)  # thriftpy2's own client checks nothing
    try:
        assert stock.count_tags(note(tags=["a", "b"], labels={"k": "v"})) == 3
        with caplog.at_level(logging.WARNING), pytest.raises(TApplicationException) as error:
            stock.count_tags(note(**undecodable))
        assert error.value.type == TApplicationException.PROTOCOL_ERROR
        assert error.value.message == "argument 'note' of count_tags holds a string that is not UTF-8"
        assert stock.count_tags(note(tags=["a"], labels={})) == 1  # a stock client does not reconnect
    finally:
        stock.close()
    assert "argument 'note' of count_tags holds a string that is not UTF-8" in caplog.text
    assert "Traceback" not in caplog.text
    assert probe.call("count_tags", note(tags=["a"], labels={})) == 1


@pytest.mark.parametrize(
    "bad", [*UNDECODABLE, {"tags": [1.5], "labels": {}}, {"tags": [], "labels": {"k": 2}}], ids=str
)
def test_the_client_checks_values_inside_a_struct_argument_before_sending(probe, bad):
    note = probe.service.count_tags_args.thrift_spec[1][2]
    with pytest.raises((TypeError, ValueError), match=r"count_tags\(\) argument note\.(tags|labels)"):
        probe.call("count_tags", note(**bad))
