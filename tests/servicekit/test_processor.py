"""What a handler receives and what its client gets back, for IDLs the Counters service does not cover."""

import logging
import threading

import pytest
import thriftpy2
from thriftpy2.thrift import TApplicationException

from servicekit.base import BASE_THRIFT
from servicekit.client import PooledClient, ServerUnreachable
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
def probe(tmp_path):
    """A Probe server in this process, and its service."""
    idl = tmp_path / "probe.thrift"
    idl.write_text(IDL.format(base=BASE_THRIFT))
    service = thriftpy2.load(str(idl), module_name="probe_thrift").Probe
    processor = GuardedProcessor(
        service, ProbeHandler(), version="1", is_serving=lambda: True, database_answers=lambda: True
    )
    server = TThreadPoolServer(processor, "127.0.0.1", free_port(), 2, 60, 10, 10, 65536, 100)
    server.listen()
    serving = threading.Thread(target=server.serve)
    serving.start()
    with PooledClient(service, f"127.0.0.1:{server.address[1]}", retries=0) as client:
        yield client
    server.close()
    serving.join(10)


def test_arguments_arrive_in_the_order_the_idl_declares_them_whatever_their_ids(probe):
    assert probe.call("pair", "S", 1) == "second=S first=1"


def test_a_result_of_the_wrong_type_is_internal_error_and_the_connection_stays_usable(probe, caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(TApplicationException) as raised:
        probe.call("wrong_type")
    assert raised.value.type == TApplicationException.INTERNAL_ERROR
    assert "wrong_type returned a result service.thrift does not allow" in caplog.text
    assert "Traceback" in caplog.text
    assert probe.call("pair", "again", 2) == "second=again first=2"


@pytest.mark.parametrize(
    "undecodable", [{"tags": ["a", b"\xff"], "labels": {}}, {"tags": [], "labels": {"k": b"caf\xe9"}}], ids=str
)
def test_a_string_that_is_not_utf_8_anywhere_in_the_arguments_closes_the_connection(probe, caplog, undecodable):
    note = probe.service.count_tags_args.thrift_spec[1][2]  # the Note struct
    assert probe.call("count_tags", note(tags=["a", "b"], labels={"k": "v"})) == 3
    with caplog.at_level(logging.WARNING), pytest.raises(ServerUnreachable):
        probe.call("count_tags", note(**undecodable))
    assert "argument 'note' of count_tags holds a string that is not UTF-8" in caplog.text
    assert "Traceback" not in caplog.text
    assert probe.call("count_tags", note(tags=["a"], labels={})) == 1
