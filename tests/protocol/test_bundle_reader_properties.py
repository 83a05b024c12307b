"""Property-based tests (hypothesis) of the bundle reader: whatever is done to a valid small bundle --
bytes changed, cut off or inserted, members dropped, repeated or reordered, header fields rewritten
with a valid checksum -- every reader (bytes, file, file into a staging directory) gives the same verdict,
raises nothing but a VerificationError, accepts only the original content, and writes nothing outside
the staging directory (and nothing at all when it refuses). With the order's digest, every change is a
digest mismatch."""

from __future__ import annotations

import contextlib
import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgefleet.protocol.bundle import verify_bundle, verify_bundle_file
from edgefleet.protocol.errors import ArchiveError, DigestMismatchError, VerificationError

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
"""About 2-4 s a test on a busy 2-core machine (the whole file ~10 s)."""


def _headers(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _verdict(fn):
    try:
        v = fn()
    except VerificationError as exc:
        return ("refused", type(exc).__name__, exc.code, exc.where)
    return ("accepted", v.manifest, dict(v.files), frozenset(v.signed_by))


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _tree(paths: set[str]) -> set[str]:
    """The files and every directory above them."""
    return paths | {str(parent) for p in paths for parent in Path(p).parents if str(parent) != "."}


def judge(data: bytes, built, trusted, *, note: bool = True) -> tuple:
    """Every reader's verdict on ``data`` (the same for all), checked against the properties."""
    original = _verdict(lambda: verify_bundle(built.data, trusted=trusted))
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):
        root = Path(tmp)
        path, staging = root / "b.bundle", root / "staging"
        path.write_bytes(data)
        verdict = _verdict(lambda: verify_bundle(data, trusted=trusted))
        if note:  # what the examples reached: pytest --hypothesis-show-statistics
            event("accepted" if verdict[0] == "accepted" else f"refused: {verdict[2]}")
        assert _verdict(lambda: verify_bundle_file(path, trusted=trusted)) == verdict
        assert _verdict(lambda: verify_bundle_file(path, trusted=trusted, out_dir=staging)) == verdict
        if verdict[0] == "accepted":
            assert verdict == original          # never another manifest, file or signer
            staged = _tree({f.path for f in built.manifest.files})
            assert _files_under(staging) == staged      # every file, nothing half-written, nothing else
            assert _files_under(root) == {"b.bundle", "staging", *(f"staging/{p}" for p in staged)}
        else:
            assert _files_under(root) == {"b.bundle"}   # a refusal leaves nothing, anywhere
        if data != built.data:
            with pytest.raises(DigestMismatchError):
                verify_bundle_file(path, trusted=trusted, expected_digest=built.digest, out_dir=root / "again")
            assert not (root / "again").exists()
    return verdict


@FAST
@given(changes=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=4))
def test_changed_bytes(built, trusted_release, changes):
    data = bytearray(built.data)
    for where, value in changes:
        data[where % len(data)] = value
    judge(bytes(data), built, trusted_release)


@FAST
@given(cut=st.integers(min_value=0), junk=st.binary(max_size=600), at=st.integers(min_value=0))
def test_cut_and_inserted_bytes(built, trusted_release, cut, junk, at):
    data = built.data[: cut % (len(built.data) + 1)]
    at %= len(data) + 1
    judge(data[:at] + junk + data[at:], built, trusted_release)


@settings(FAST, max_examples=60)
@given(data=st.data())
def test_members_dropped_repeated_or_reordered(built, trusted_release, data):
    """Accepted exactly when the manifest comes first, the signatures second and every file once after."""
    with tarfile.open(fileobj=io.BytesIO(built.data)) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    everything, files = range(len(members)), list(range(2, len(members)))
    sequence = data.draw(st.one_of(
        st.lists(st.sampled_from(everything), max_size=len(members) + 2),      # anything
        st.permutations(everything).map(list),                                 # all of them, any order
        st.permutations(files).map(lambda p: [0, 1, *p]),                       # the files in any order
        st.permutations(files).map(lambda p: [0, 1, *p[1:]]),                   # ... one missing
        st.permutations(files).map(lambda p: [0, 1, *p, p[0]]),                 # ... one twice
    ))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in sequence:
            info, content = members[i]
            tar.addfile(info, io.BytesIO(content))
    verdict = judge(buf.getvalue(), built, trusted_release)
    valid = sequence[:2] == [0, 1] and sorted(sequence[2:]) == list(range(2, len(members)))
    assert (verdict[0] == "accepted") == valid, (sequence, verdict)
    if sequence[:1] != [0]:
        assert verdict[1] == ArchiveError.__name__


NAMES = [b"/etc/passwd", b"../manifest.json", b"files/../../x", b"files/./model.onnx", b"files//x", b"files/",
         b"files/a\\b", b"manifest.json", b"signatures.json", b"delegations.json", b"README", b"files/evil.so",
         b"files/model.onnx", b"files/extra/zeros.bin", b"\xff\xfe", b""]
TRICKS = st.one_of(
    st.tuples(st.just((156, 1)), st.sampled_from([b"0", b"\0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"S",
                                                  b"x", b"g", b"L", b"K", b"V", b"Z"])),          # typeflag
    st.tuples(st.just((0, 100)), st.sampled_from(NAMES) | st.binary(max_size=100)),                # name
    st.tuples(st.just((345, 155)), st.sampled_from([b"", b"..", b"/etc", b"files", b"x" * 155])),  # ustar prefix
    st.tuples(st.just((124, 12)), st.integers(0, 40_000).map(lambda n: b"%011o\0" % n)),           # size, octal
    st.tuples(st.just((124, 12)), st.integers(0, 2**70).map(lambda n: b"\x80" + n.to_bytes(11, "big"))),  # base-256
    st.tuples(st.just((157, 100)), st.sampled_from([b"/etc/shadow", b"../x", b""])),               # linkname
    st.tuples(st.sampled_from([(100, 8), (108, 8), (116, 8), (136, 12), (265, 32), (329, 8)]),     # mode, ids, mtime,
              st.binary(max_size=12)),                                                            # owner, devices
    st.tuples(st.just((257, 8)), st.sampled_from([b"ustar\x0000", b"ustar  \0", b"\0" * 8, b"garbage!"])),  # magic
)


@FAST
@given(member=st.integers(min_value=0), tricks=st.lists(TRICKS, min_size=1, max_size=3), fix=st.booleans())
def test_header_fields_rewritten(built, trusted_release, member, tricks, fix):
    data = bytearray(built.data)
    header = _headers(built.data)[member % len(_headers(built.data))].offset
    for (offset, length), value in tricks:
        data[header + offset: header + offset + length] = value.ljust(length, b"\0")[:length]
    if fix:
        block = data[header: header + 512]
        block[148:156] = b" " * 8
        data[header + 148: header + 156] = b"%06o\0 " % sum(block)
    judge(bytes(data), built, trusted_release)


def test_the_properties_hold_for_the_original(built, trusted_release):
    """The judge itself: the unchanged bundle is accepted and staged in full."""
    assert judge(built.data, built, trusted_release, note=False)[0] == "accepted"
