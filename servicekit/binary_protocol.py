"""The numbers of Thrift's binary protocol, declared once: type codes, the strict version, message types.

wire.py checks messages with them; probe.py, which must not import thriftpy2 or
wire.py's compiled patterns (a container probe runs every few seconds), writes
and reads its two calls with them.
"""

STOP, BOOL, BYTE, DOUBLE, I16, I32, I64, STRING, STRUCT, MAP, SET, LIST = 0, 2, 3, 4, 6, 8, 10, 11, 12, 13, 14, 15
FIXED_SIZE = {BOOL: 1, BYTE: 1, DOUBLE: 8, I16: 2, I32: 4, I64: 8}
VERSION_1 = 0x80010000  # a strict binary message's version; its low byte is the message type
CALL, REPLY, EXCEPTION, ONE_WAY = 1, 2, 3, 4
# The TApplicationException type for a client the server will not talk to (Apache Thrift's name: thriftpy2
# names types 0-7 only): a TLS port answers a plain-text call with it.
UNSUPPORTED_CLIENT_TYPE = 10
