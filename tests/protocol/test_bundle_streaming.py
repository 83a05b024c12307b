"""Streaming verification (protocol/bundle.py ``verify_bundle_file``, protocol/bundle_reader.py): the same
verifier as ``verify_bundle`` over a file read forward once, files decoded into a staging directory,
memory that does not grow with the bundle, and the member order it requires."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from bundlekit import to_format_1

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import (
    BundleLimits,
    StagedFiles,
    build_bundle,
    pack,
    verify_bundle,
    verify_bundle_file,
)
from edgefleet.protocol.bundle_reader import CHUNK, MAX_HEADER_READ
from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.delegation import DelegationCheck, make_delegation, sign_delegations
from edgefleet.protocol.errors import (
    ArchiveError,
    DigestMismatchError,
    SizeLimitError,
    VerificationError,
)
from edgefleet.protocol.messages import DelegationsDocument, Signature

NOW = 1_800_000_000


def split(data: bytes) -> tuple[bytes, list[Signature], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar}
    sigs = [Signature.model_validate(s) for s in json.loads(members.pop("signatures.json"))]
    return members.pop("manifest.json"), sigs, {k[len("files/"):]: v for k, v in members.items()}


def resign(manifest: dict, stored: dict[str, bytes], key) -> bytes:
    raw = canonical_json(manifest)
    return pack(raw, [keys.sign(key, raw)], stored)


def raw_tar(members: list[tuple[str, bytes] | tarfile.TarInfo], fmt=tarfile.USTAR_FORMAT) -> bytes:
    """An archive of (name, data) members and special members (a TarInfo without data)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
                continue
            info = tarfile.TarInfo(member[0])
            info.size = len(member[1])
            tar.addfile(info, io.BytesIO(member[1]))
    return buf.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def members_of(data: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(i.name, tar.extractfile(i).read()) for i in tar]


def write(tmp_path: Path, data: bytes, name: str = "b.bundle") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def outcome(fn):
    """(error class, code, where) of a refusal, or the verified content."""
    try:
        v = fn()
    except VerificationError as exc:
        return type(exc), exc.code, exc.where
    return v.manifest, dict(v.files), v.signed_by, v.digest


@pytest.fixture(scope="module")
def big(recipe, onnx_model, samples, release_key):
    """A bundle of ~9 MB: random bytes stored as they are and zeros that deflate, both several chunks long."""
    rng = np.random.default_rng(11)
    extra = {"weights/random.bin": rng.bytes(3 * CHUNK + 17), "weights/sparse.bin": bytes(5 * CHUNK) + b"end",
             "weights/empty.bin": b""}
    return build_bundle(recipe, onnx_model, samples=samples, release_key=release_key, extra_files=extra)


# --------------------------------------------------------------------------- the same verifier

@pytest.mark.parametrize("fixture", ["built", "big"])
def test_a_file_verifies_to_what_the_bytes_verify_to(request, fixture, trusted_release, tmp_path):
    bundle = request.getfixturevalue(fixture)
    path = write(tmp_path, bundle.data)
    in_memory = verify_bundle(bundle.data, trusted=trusted_release, expected_digest=bundle.digest)
    for out_dir in (None, tmp_path / "staging"):
        streamed = verify_bundle_file(path, trusted=trusted_release, expected_digest=bundle.digest,
                                      expected_size=len(bundle.data), out_dir=out_dir)
        assert streamed.manifest == in_memory.manifest == bundle.manifest
        assert streamed.digest == bundle.digest and streamed.signed_by == in_memory.signed_by
        assert dict(streamed.files) == dict(in_memory.files)
        assert streamed.smoke_test().expected.keys() == in_memory.smoke_test().expected.keys()
    assert in_memory.files["weights/sparse.bin" if fixture == "big" else "extra/zeros.bin"].endswith(
        b"end" if fixture == "big" else b"tail")


def test_files_are_staged_under_their_manifest_paths_and_read_from_disk(big, trusted_release, tmp_path):
    staging = tmp_path / "staging"
    v = verify_bundle_file(write(tmp_path, big.data), trusted=trusted_release, out_dir=staging)
    assert isinstance(v.files, StagedFiles)
    on_disk = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert on_disk == sorted(f.path for f in big.manifest.files)       # nothing else, no partial file
    assert (staging / "weights" / "sparse.bin").read_bytes() == bytes(5 * CHUNK) + b"end"
    assert v.files.path("model.onnx") == staging / "model.onnx" and v.model == (staging / "model.onnx").read_bytes()
    (staging / "weights" / "empty.bin").write_bytes(b"changed later")   # files are read when asked for
    assert v.files["weights/empty.bin"] == b"changed later"
    with pytest.raises(KeyError):
        v.files["not/listed"]


def test_old_and_delegated_bundles_verify_from_a_file(built, release_key, trusted_release, recipe, onnx_model,
                                                      samples, tmp_path):
    old = to_format_1(built.data, release_key, trusted_release)
    v1 = verify_bundle_file(write(tmp_path, old, "f1"), trusted=trusted_release, out_dir=tmp_path / "s1")
    assert v1.manifest.format_version == 1 and v1.reference_profile() == built.profile

    delegated = keys.generate_private_key()
    doc = sign_delegations(DelegationsDocument(version=1, expires_at=NOW + 10**6, delegations=[make_delegation(
        name="ci", public_key=delegated.public_key(), name_patterns=["*"], hardware_classes=["*"],
        expires_at=NOW + 10**6)]), [release_key])
    data = build_bundle(recipe, onnx_model, samples=samples, release_key=delegated, delegations=doc).data
    check = DelegationCheck(now=NOW, known=None, hardware_class="cam", installing=True)
    v = verify_bundle_file(write(tmp_path, data, "d"), trusted=trusted_release, delegation=check,
                           out_dir=tmp_path / "s2")
    assert v.signed_by == {keys.key_id(delegated.public_key())} and v.delegated.document == doc


# --------------------------------------------------------------------------- the same refusals

def _tamperings(built, release_key) -> dict[str, bytes]:
    manifest, sigs, stored = split(built.data)
    m = json.loads(manifest)
    flipped = bytearray(built.data)
    flipped[-2000] ^= 1
    bomb = zlib.compress(bytes(4 * CHUNK), 9)
    bombed = json.loads(manifest)
    entry = next(f for f in bombed["files"] if f["path"] == "extra/zeros.bin")
    entry.update(size=1000, sha256=hashlib.sha256(bytes(1000)).hexdigest(), encoding="deflate", stored_size=len(bomb))
    members = members_of(built.data)
    return {
        "manifest edited": pack(manifest.replace(b'"version":"1.2.3"', b'"version":"1.2.4"'), sigs, stored),
        "file content": pack(manifest, sigs, {**stored, "extra/random.bin": b"x" * 2000}),
        "stored size": pack(manifest, sigs, {**stored, "model.onnx": stored["model.onnx"] + b"\0"}),
        "a byte flipped": bytes(flipped),
        "deflate bomb": resign(bombed, {**stored, "extra/zeros.bin": bomb}, release_key),
        "unlisted file": pack(manifest, sigs, {**stored, "evil.so": b"\x7fELF"}),
        "listed file missing": pack(manifest, sigs, {k: v for k, v in stored.items() if k != "extra/random.bin"}),
        "symlink": raw_tar([*members[:2], symlink("files/model.onnx", "/etc/shadow"),
                            *[m for m in members[2:] if m[0] != "files/model.onnx"]]),
        "truncated": built.data[:3000],
        "unsafe path": raw_tar([*members, ("files/../../etc/cron.d/x", b"evil")]),
        "signed invalid manifest": resign({**m, "version": "one"}, stored, release_key),
        "garbage": b"garbage" * 300,
    }


def test_every_tampering_gets_the_same_refusal_from_a_file(built, release_key, trusted_release, tmp_path):
    for i, (what, data) in enumerate(_tamperings(built, release_key).items()):
        expected = outcome(lambda d=data: verify_bundle(d, trusted=trusted_release))
        assert isinstance(expected[0], type) and issubclass(expected[0], VerificationError), what
        path = write(tmp_path, data, f"{i}.bundle")
        staging = tmp_path / f"staging-{i}"
        assert outcome(lambda p=path: verify_bundle_file(p, trusted=trusted_release)) == expected, what
        assert outcome(lambda p=path, s=staging: verify_bundle_file(p, trusted=trusted_release, out_dir=s)) \
            == expected, what
        assert not staging.exists(), what                      # a refusal leaves nothing staged
        # with the order's digest, every one of them is a digest mismatch, and nothing stays staged
        with pytest.raises(DigestMismatchError):
            verify_bundle_file(path, trusted=trusted_release, expected_digest=built.digest, out_dir=staging)
        assert not staging.exists(), what


def test_a_digest_mismatch_found_after_the_files_were_staged_removes_them(built, release_key, trusted_release,
                                                                          tmp_path):
    """Another (genuine) signature makes another bundle: every file checks out and is staged before the
    end of the file says the digest differs."""
    manifest, sigs, stored = split(built.data)
    other = pack(manifest, [*sigs, keys.sign(keys.generate_private_key(), manifest)], stored)
    path, staging = write(tmp_path, other), tmp_path / "staging"
    assert verify_bundle_file(path, trusted=trusted_release, out_dir=staging).manifest == built.manifest
    with pytest.raises(DigestMismatchError) as ei:
        verify_bundle_file(path, trusted=trusted_release, expected_digest=built.digest, out_dir=tmp_path / "s2")
    assert ei.value.where == "bundle" and not (tmp_path / "s2").exists()


def test_the_order_size_and_the_device_limit_come_first(built, trusted_release, tmp_path):
    path = write(tmp_path, built.data)
    with pytest.raises(SizeLimitError, match="the order says"):
        verify_bundle_file(path, trusted=trusted_release, expected_size=len(built.data) + 1, out_dir=tmp_path / "s")
    with pytest.raises(SizeLimitError, match="limit"):
        verify_bundle_file(path, trusted=trusted_release, limits=BundleLimits(max_bundle_bytes=len(built.data) - 1))
    assert not (tmp_path / "s").exists()


def test_the_staging_directory_must_be_new(built, trusted_release, tmp_path):
    (tmp_path / "s").mkdir()
    with pytest.raises(FileExistsError):
        verify_bundle_file(write(tmp_path, built.data), trusted=trusted_release, out_dir=tmp_path / "s")


def test_bytes_outside_the_members_still_verify_and_the_digest_catches_them(built, trusted_release, tmp_path):
    for i, variant in enumerate((built.data[:-2], built.data + b"appended")):
        path = write(tmp_path, variant, f"{i}")
        assert verify_bundle_file(path, trusted=trusted_release).manifest == built.manifest
        with pytest.raises(DigestMismatchError):
            verify_bundle_file(path, trusted=trusted_release, expected_digest=built.digest)


# --------------------------------------------------------------------------- what streaming adds

@pytest.mark.parametrize(("order", "match"), [
    (["signatures.json", "manifest.json"], "missing manifest.json as the first member"),
    (["files/model.onnx", "manifest.json", "signatures.json"], "missing manifest.json as the first member"),
    (["manifest.json", "files/model.onnx", "signatures.json"], "missing signatures.json as the second member"),
])
def test_the_manifest_and_signatures_must_come_first(built, trusted_release, tmp_path, order, match):
    members = dict(members_of(built.data))
    data = raw_tar([(n, members[n]) for n in order] + [(n, v) for n, v in members.items() if n not in order])
    for verify in (lambda: verify_bundle(data, trusted=trusted_release),
                   lambda: verify_bundle_file(write(tmp_path, data), trusted=trusted_release)):
        with pytest.raises(ArchiveError, match=match) as ei:
            verify()
        assert ei.value.code == "unsafe_archive" and "docs/bundle-format.md" in ei.value.hint


def test_delegations_must_follow_the_signatures(built, trusted_release):
    members = members_of(built.data)
    data = raw_tar([*members, ("delegations.json", b"{}")])
    with pytest.raises(ArchiveError, match="not the third") as ei:
        verify_bundle(data, trusted=trusted_release)
    assert ei.value.where == "delegations.json"


def test_the_files_may_come_in_any_order(built, trusted_release):
    members = members_of(built.data)
    data = raw_tar(members[:2] + list(reversed(members[2:])))
    assert verify_bundle(data, trusted=trusted_release).files == verify_bundle(built.data,
                                                                               trusted=trusted_release).files


def test_signatures_json_is_bounded_before_it_is_read(built, trusted_release):
    members = members_of(built.data)
    data = raw_tar([members[0], ("signatures.json", b" " * 5000), *members[2:]])
    with pytest.raises(SizeLimitError) as ei:
        verify_bundle(data, trusted=trusted_release, limits=BundleLimits(max_manifest_bytes=4096))
    assert ei.value.where == "signatures.json"


def test_a_huge_extension_header_is_refused_not_read(built, trusted_release):
    members = members_of(built.data)
    long_name = "files/" + "d/" * 60 + "x.bin"   # a GNU long-name record, here claiming to be huge
    data = bytearray(raw_tar([*members[:2], (long_name, b"x")], fmt=tarfile.GNU_FORMAT))
    header = _find_header(bytes(data), b"././@LongLink")
    _set_field(data, header, 124, 12, b"%011o\0" % (MAX_HEADER_READ * 4))
    with pytest.raises(ArchiveError, match="header record larger"):
        verify_bundle(bytes(data), trusted=trusted_release)


@pytest.mark.parametrize(("added", "why"), [("extra", "'extra' is also the directory of 'extra/random.bin'"),
                                            ("extra/zeros.bin", "'extra/zeros.bin' is listed twice")])
def test_file_paths_that_cannot_share_one_directory_tree_are_refused(built, trusted_release, release_key, added,
                                                                     why):
    manifest, _, stored = split(built.data)
    m = json.loads(manifest)
    entry = next(f for f in m["files"] if f["path"] == "extra/zeros.bin")
    m["files"] = sorted([*m["files"], dict(entry, path=added)], key=lambda f: f["path"])
    with pytest.raises(VerificationError, match=why) as ei:
        verify_bundle(resign(m, stored, release_key), trusted=trusted_release)
    assert ei.value.where == "manifest.files"


def test_a_deflated_file_of_many_chunks_inflates_and_a_bomb_stops_at_its_size(built, release_key, trusted_release,
                                                                            tmp_path):
    manifest, _, stored = split(built.data)
    content = bytes(3 * CHUNK) + b"x" * 10
    packed = zlib.compress(content, 9)
    for size, sha, ok in ((len(content), hashlib.sha256(content).hexdigest(), True),
                          (2 * CHUNK, hashlib.sha256(bytes(2 * CHUNK)).hexdigest(), False)):
        m = json.loads(manifest)
        entry = next(f for f in m["files"] if f["path"] == "extra/zeros.bin")
        entry.update(size=size, sha256=sha, encoding="deflate", stored_size=len(packed))
        path = write(tmp_path, resign(m, {**stored, "extra/zeros.bin": packed}, release_key), f"{ok}")
        if ok:
            v = verify_bundle_file(path, trusted=trusted_release, out_dir=tmp_path / "ok")
            assert v.files["extra/zeros.bin"] == content
        else:
            with pytest.raises(SizeLimitError, match="inflates past") as ei:
                verify_bundle_file(path, trusted=trusted_release, out_dir=tmp_path / "bomb")
            assert ei.value.where == "extra/zeros.bin" and not (tmp_path / "bomb").exists()


def test_memory_does_not_grow_with_the_bundle(recipe, onnx_model, samples, release_key, trusted_release, tmp_path):
    """Python allocations (tracemalloc) while a 24 MB bundle -- 16 MB stored as is, 8 MB deflated -- is
    verified into a directory stay a few chunks; verified into memory they hold the files."""
    rng = np.random.default_rng(5)
    extra = {"w/random.bin": rng.bytes(16 * CHUNK), "w/zeros.bin": bytes(8 * CHUNK)}
    data = build_bundle(recipe, onnx_model, samples=samples, release_key=release_key, extra_files=extra).data
    path, digest = write(tmp_path, data), hashlib.sha256(data).hexdigest()
    del data, extra

    def peak(**kw) -> int:
        tracemalloc.start()
        try:
            verify_bundle_file(path, trusted=trusted_release, expected_digest=digest, **kw)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    streamed, kept = peak(out_dir=tmp_path / "staging"), peak()
    print(f"peak Python allocations: {streamed / CHUNK:.1f} MiB streamed to disk, {kept / CHUNK:.1f} MiB in memory")
    assert streamed < 8 * CHUNK
    assert kept > 24 * CHUNK   # the measurement sees the files when they are kept in memory


def _find_header(data: bytes, name: bytes) -> int:
    for offset in range(0, len(data), 512):
        if data[offset:offset + len(name)] == name:
            return offset
    raise AssertionError(f"no header {name!r}")


def _set_field(data: bytearray, header: int, offset: int, length: int, value: bytes) -> None:
    """Overwrite one field of the ustar header at ``header`` and fix its checksum."""
    data[header + offset: header + offset + length] = value.ljust(length, b"\0")[:length]
    block = data[header: header + 512]
    block[148:156] = b" " * 8
    data[header + 148: header + 156] = b"%06o\0 " % sum(block)
