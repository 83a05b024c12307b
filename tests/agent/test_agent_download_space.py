"""The downloader on a device without room: refused before anything is read when the free space cannot
take the signed size, and a write that hits a full disk ends in NoSpaceError with the partial file deleted
(not a retryable transport error)."""

from __future__ import annotations

import errno
import hashlib
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgefleet.agent import download as downloader
from edgefleet.protocol.errors import NoSpaceError
from edgefleet.protocol.vocabulary import Reason

BODY = bytes(range(256)) * 4096   # 1 MiB
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def server():
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/b.efb", hits
    httpd.shutdown()


def test_too_little_room_is_refused_before_the_request(server, tmp_path, monkeypatch):
    url, hits = server
    monkeypatch.setattr(downloader.shutil, "disk_usage", lambda _: Usage(10**9, 10**9, len(BODY)))
    with pytest.raises(NoSpaceError) as info:
        downloader.download(url, tmp_path / "b.bundle", expected_size=len(BODY),
                            expected_sha256=hashlib.sha256(BODY).hexdigest())
    assert info.value.code == Reason.NO_SPACE and info.value.where == str(tmp_path)
    assert f"{len(BODY)} bytes free" in str(info.value) and "free space on the agent's state_dir" in str(info.value)
    assert hits == [] and list(tmp_path.iterdir()) == []


def test_a_write_on_a_full_disk_deletes_the_part_file(server, tmp_path, monkeypatch):
    url, _ = server
    real_open = open

    class FullDisk:
        """The part file on a disk that fills up after 300 000 bytes."""

        def __init__(self, *args, **kwargs) -> None:
            self.fh = real_open(*args, **kwargs)
            self.written = 0

        def write(self, chunk: bytes) -> int:
            if self.written + len(chunk) > 300_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(chunk)
            return self.fh.write(chunk)

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.fh.close()

    monkeypatch.setattr(downloader, "open", FullDisk, raising=False)
    with pytest.raises(NoSpaceError) as info:
        downloader.download(url, tmp_path / "b.bundle", expected_size=len(BODY),
                            expected_sha256=hashlib.sha256(BODY).hexdigest())
    assert "the disk filled up after" in str(info.value)
    assert list(tmp_path.iterdir()) == []   # no .part left behind
