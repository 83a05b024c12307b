"""The one atomic file writer: old or new content after a failure, secrets 0600, no leftovers."""

import os
import stat

import pytest

from edgefleet.protocol.files import atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_bytes_and_creates_the_directory(tmp_path):
    path = atomic_write(tmp_path / "a" / "b" / "f.bin", b"hello")
    assert path.read_bytes() == b"hello"
    assert _mode(path) == 0o644


def test_secret_is_0600_even_over_a_wider_file(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_text("old")
    path.chmod(0o666)
    atomic_write(path, b"password = 'x'", secret=True)
    assert _mode(path) == 0o600
    assert path.read_bytes() == b"password = 'x'"


def test_chunks_are_written_in_order(tmp_path):
    path = atomic_write(tmp_path / "f", iter([b"ab", b"", b"cd"]))
    assert path.read_bytes() == b"abcd"


def test_a_failure_while_writing_keeps_the_old_content_and_no_temp_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old")

    def chunks():
        yield b"new, half"
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, chunks())
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
