"""TCP forwarders on 127.0.0.1: one whose target moves (a VIP or DNS name), one that loses replies."""

import socket
import threading
from contextlib import suppress


class Forwarder:
    """Forwards each new connection to 127.0.0.1:target_port, as a VIP or a DNS name leads to a server.

    Set `target_port` to move it, as a failover moves a VIP or a DNS name: new connections go to the new target,
    open ones stay where they were.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the target is down: refused, as it would be
                downstream.close()
                continue
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        while data := self._recv(source):
            if replies and not self._passes(data):
                break
            sink.sendall(data)
        for sock in (source, sink):  # shutdown, unlike close, wakes the other pump and sends FIN
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _passes(self, reply: bytes) -> bool:
        """Whether to forward this reply; else the connection is cut."""
        return True

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    def close(self) -> None:
        with suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() a plain close would leave blocked
        self.listener.close()


class ReplyDroppingProxy(Forwarder):
    """Cuts the connection instead of forwarding the first `drop` replies: the server committed, the client never
    hears of it."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.drop = drop
        super().__init__(target_port)

    def _passes(self, reply: bytes) -> bool:
        if self.drop > 0:
            self.drop -= 1
            return False
        return True
