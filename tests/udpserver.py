"""A UDP server on 127.0.0.1 for the DNS stand-ins of the tests and benches.

Each datagram is handled in a thread of its own by ``handle(data)``, which
returns the answer to send back (or None for no answer).  ``self.stopping``
is set at stop, so a handler that holds its answer back can wait on it.
"""

from __future__ import annotations

import socket
import threading


class UdpServer:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def handle(self, data: bytes):
        raise NotImplementedError

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.queries += 1
            threading.Thread(target=self._answer, args=(data, peer), daemon=True).start()

    def _answer(self, data: bytes, peer) -> None:
        answer = self.handle(data)
        if answer is None:
            return
        try:
            self.sock.sendto(answer, peer)
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping.set()
        self.sock.close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def forward(data: bytes, port: int, timeout: float = 2.0):
    """Ask the DNS server on 127.0.0.1:``port``; its answer, or None if it
    gave none in time (the client then times out, as with a lost answer)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
        up.settimeout(timeout)
        try:
            up.sendto(data, ("127.0.0.1", port))
            return up.recv(65535)
        except OSError:
            return None
