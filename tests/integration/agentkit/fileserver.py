"""An HTTP file server with Range support and fault injection, in a thread."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    cut_after: int | None = None
    """Close the connection after this many body bytes (once per ``cut_times``)."""
    cut_times: int = 1
    endless: bool = False
    """Ignore the file size: keep sending bytes (no Content-Length)."""
    ignore_range: bool = False
    fail_status: int | None = None
    fail_times: int = 0
    stall: threading.Event | None = None
    """Hold every response until the event is set."""
    hold_after: int | None = None
    """Send this many body bytes, then hold the rest until ``release`` is set."""
    release: threading.Event = field(default_factory=threading.Event)
    redirects: dict[str, str] = field(default_factory=dict)
    """path -> Location: answer 302 there instead of serving."""
    requests: list[dict] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files`` with Range, and misbehaves as ``server.faults`` says."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        f = self.server.faults
        rng = self.headers.get("Range")
        f.requests.append({"path": self.path, "range": rng})
        if f.stall is not None:
            f.stall.wait(30)
        if self.path in f.redirects:
            self.send_response(302)
            self.send_header("Location", f.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if f.fail_status and f.fail_times > 0:
            f.fail_times -= 1
            self.send_error(f.fail_status)
            return
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if f.endless:
            self._send_endless(data)
            return
        body = self._send_headers(data, rng, f)
        if body is not None:
            self._send_body(body, f)

    def _send_endless(self, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        chunk = data + b"\0" * 65536
        try:
            for _ in range(4096):
                self.wfile.write(chunk)
        except OSError:
            pass
        self.close_connection = True

    def _send_headers(self, data: bytes, rng: str | None, f: Faults) -> bytes | None:
        """Status and headers for a (ranged) GET; the body to send, or None when there is none."""
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and not f.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return body

    def _send_body(self, body: bytes, f: Faults) -> None:
        if f.hold_after is not None and not f.release.is_set():
            self.wfile.write(body[: f.hold_after])
            self.wfile.flush()
            f.release.wait(60)
            self.close_connection = True
            return
        if f.cut_after is not None and f.cut_times > 0:
            f.cut_times -= 1
            self.wfile.write(body[: f.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes], faults: Faults) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files, self.faults = files, faults


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults = Faults()
        self.httpd = _Server(self.files, self.faults)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url(path)

    def start(self) -> FileServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.faults.stall is not None:
            self.faults.stall.set()
        self.faults.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
