"""A TCP proxy that loses replies: the server committed, the client never hears of it."""

import socket
import threading
from contextlib import suppress


class ReplyDroppingProxy:
    """Forwards to 127.0.0.1:target_port, but cuts the connection instead of forwarding the first `drop` replies."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port = target_port
        self.drop = drop
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(downstream, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, True), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, replies: bool) -> None:
        while data := self._recv(source):
            if replies and self.drop > 0:
                self.drop -= 1
                break
            sink.sendall(data)
        for sock in (source, sink):  # shutdown, unlike close, wakes the other pump and sends FIN
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

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
