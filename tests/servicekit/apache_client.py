"""A client of the Counters test service written with Apache Thrift's own Python library, as its users write one.

Run as `python -P apache_client.py PORT TRANSPORT PROTOCOL NAME SERVICE` with the Apache compiler's code for
counters.thrift on PYTHONPATH (`thrift -r --gen py`); a SERVICE name (not "") calls through TMultiplexedProtocol.
On one connection it calls ping, add, get and get of a missing counter, and prints what came back as JSON.
"""

import json
import sys

from counters.ttypes import NotFound
from thrift.protocol import TBinaryProtocol, TCompactProtocol, TMultiplexedProtocol
from thrift.transport import TSocket, TTransport

from counters import Counters

TRANSPORTS = {"buffered": TTransport.TBufferedTransport, "framed": TTransport.TFramedTransport}
PROTOCOLS = {"binary": TBinaryProtocol.TBinaryProtocol, "compact": TCompactProtocol.TCompactProtocol}


def main(port: int, transport: str, protocol: str, name: str, service: str) -> dict:
    sock = TSocket.TSocket("127.0.0.1", port)
    sock.setTimeout(10_000)
    wire = TRANSPORTS[transport](sock)
    speaking = PROTOCOLS[protocol](wire)
    client = Counters.Client(TMultiplexedProtocol.TMultiplexedProtocol(speaking, service) if service else speaking)
    wire.open()
    try:
        results = {"ping": client.ping()}
        wire.flush()  # with nothing written, as code may flush: framed, an empty frame, which Apache's servers skip
        results |= {"add": client.add(name, 2, f"{name}-1").total, "get": client.get(name).total}
        try:
            client.get(name + "-missing")
        except NotFound as error:
            results["error"] = error.message
        return results
    finally:
        wire.close()


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), *sys.argv[2:6])))
