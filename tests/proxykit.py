"""A TCP proxy for fault tests: forwards a port to another, and cuts one connection at a chosen byte
(after the test's own condition holds), like a link that drops in the middle of an upload."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from testkit import free_port


class CutProxy:
    """``127.0.0.1:<port>`` -> ``127.0.0.1:<upstream_port>``. After ``cut_next(after, then)``, the next
    connection that sends more than ``after`` bytes upstream forwards exactly ``after`` of them, sets
    ``holding``, runs ``then()`` (the test's condition: the far side took the bytes, a controller was
    killed...), then closes both sides. Every other connection passes through untouched."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        self.holding = threading.Event()
        self._cut: tuple[int, Callable[[], object]] | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, name="cut-proxy", daemon=True).start()

    def cut_next(self, after: int, then: Callable[[], object]) -> None:
        self.holding.clear()
        self._cut = (after, then)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _take_cut(self, sent: int, size: int) -> tuple[int, Callable[[], object]] | None:
        with self._lock:
            cut = self._cut
            if cut is None or sent + size <= cut[0]:
                return None
            self._cut = None
            return cut

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                cut = self._take_cut(sent, len(data)) if upstream else None
                if cut is not None:
                    dst.sendall(data[: cut[0] - sent])
                    self.holding.set()
                    cut[1]()
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._listener.close()


class Balancer:
    """A round-robin TCP load balancer on ``127.0.0.1:<port>`` in front of several controllers, as an
    operator's haproxy or nginx stream block would be: each new connection goes to the next upstream that
    accepts it, so a dead controller is passed over. ``upstreams`` may be set after the port is known
    (the controllers' ``public_url`` names the balancer). benchmarks/fleet.py uses it too."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstreams: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=1024)
        threading.Thread(target=self._accept, name="balancer", daemon=True).start()

    def _connect(self) -> socket.socket | None:
        with self._lock:
            ports, start = list(self.upstreams), self._next
            self._next += 1
        for i in range(len(ports)):
            try:
                upstream = socket.create_connection(("127.0.0.1", ports[(start + i) % len(ports)]), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            return upstream
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()   # on the connection's own thread: a slow upstream holds up no other client
        if upstream is None:
            client.close()
            return
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self._listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()
