"""Bundle format: reproducible builds, layout, verification and every refusal."""

import hashlib
import io
import json
import tarfile
import zlib

import numpy as np
import pytest

from edgefleet.protocol import keys
from edgefleet.protocol.bundle import (
    BundleLimits,
    add_signature,
    build_bundle,
    pack,
    parse_recipe,
    read_manifest,
    verify_bundle,
)
from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.errors import (
    ArchiveError,
    DigestMismatchError,
    SignatureError,
    SizeLimitError,
    UnknownKeyError,
    VerificationError,
)
from edgefleet.protocol.messages import Signature
from edgefleet.protocol.runtimes import open_session

from protocolkit import RECIPE, make_onnx_model

ARRAY_FILES = ("smoke/expected/probs.npy", "smoke/inputs/x.npy")
"""Format 2's files of the test bundle (its 4-feature profile is smaller inline than as files)."""

# --------------------------------------------------------------------------- helpers

def _split(data: bytes) -> tuple[bytes, list[Signature], dict[str, bytes]]:
    """(manifest bytes, signatures, stored files) of a bundle, via plain tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar}
    sigs = [Signature.model_validate(s) for s in json.loads(members.pop("signatures.json"))]
    manifest = members.pop("manifest.json")
    return manifest, sigs, {k[len("files/"):]: v for k, v in members.items()}


def _resign(manifest: dict, stored: dict[str, bytes], key) -> bytes:
    """A bundle whose (crafted) manifest is properly signed by ``key``."""
    raw = canonical_json(manifest)
    return pack(raw, [keys.sign(key, raw)], stored)


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _valid_members(built) -> list[tuple[tarfile.TarInfo, bytes]]:
    manifest, sigs, stored = _split(built.data)
    out = [_reg("manifest.json", manifest),
           _reg("signatures.json", canonical_json([s.model_dump() for s in sigs]))]
    out += [_reg("files/" + p, v) for p, v in sorted(stored.items())]
    return out


def _manifest_dict(built) -> dict:
    return json.loads(_split(built.data)[0])


# --------------------------------------------------------------------------- building

def test_verify_ok(built, trusted_release, release_key):
    v = verify_bundle(built.data, trusted=trusted_release, expected_digest=built.digest,
                      expected_size=len(built.data))
    assert v.manifest == built.manifest
    assert v.digest == built.digest == hashlib.sha256(built.data).hexdigest()
    assert v.signed_by == {keys.key_id(release_key.public_key())}
    assert v.model == make_onnx_model()
    assert v.files["extra/zeros.bin"] == bytes(5000) + b"tail"
    assert set(v.files) == {"model.onnx", "extra/zeros.bin", "extra/random.bin", *ARRAY_FILES}


def test_reproducible(recipe, onnx_model, samples, release_key):
    extra = {"b.txt": b"bee" * 100, "a.txt": b"a"}
    one = build_bundle(recipe, onnx_model, samples=samples, release_key=release_key, extra_files=extra)
    two = build_bundle(parse_recipe(RECIPE), bytes(onnx_model), samples=samples.copy(), release_key=release_key,
                       extra_files=dict(reversed(list(extra.items()))))
    assert one.data == two.data
    assert one.digest == two.digest


def test_different_inputs_give_different_bundles(recipe, onnx_model, samples, release_key):
    base = build_bundle(recipe, onnx_model, samples=samples, release_key=release_key)
    other_model = build_bundle(recipe, make_onnx_model(seed=1), samples=samples, release_key=release_key)
    other_key = build_bundle(recipe, onnx_model, samples=samples, release_key=keys.generate_private_key())
    assert len({base.data, other_model.data, other_key.data}) == 3
    # the key only changes the signatures: the manifest bytes are the same
    assert _split(base.data)[0] == _split(other_key.data)[0]


def test_layout(built):
    data = built.data
    assert len(data) % 512 == 0
    assert data[-1024:] == bytes(1024)           # end-of-archive marker ...
    assert data[-1536:-1024] != bytes(512)       # ... and no record padding after it
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        infos = tar.getmembers()
        names = [i.name for i in infos]
        assert names == ["manifest.json", "signatures.json", "files/extra/random.bin", "files/extra/zeros.bin",
                         "files/model.onnx", *("files/" + f for f in ARRAY_FILES)]
        for i in infos:
            assert (i.mtime, i.uid, i.gid, i.uname, i.gname, i.mode, i.type) == (0, 0, 0, "", "", 0o644,
                                                                                 tarfile.REGTYPE)
        assert infos[0].offset == 0
        manifest = tar.extractfile("manifest.json").read()
        sigs = tar.extractfile("signatures.json").read()
    assert data[257:265] == b"ustar\x0000"    # POSIX ustar magic + version
    assert manifest == canonical_json(json.loads(manifest)) == canonical_json(built.manifest.model_dump(mode="json"))
    assert sigs == canonical_json(json.loads(sigs))
    assert [set(s) for s in json.loads(sigs)] == [{"keyid", "sig"}]


def test_file_encodings(built):
    files = {f.path: f for f in built.manifest.files}
    _, _, stored = _split(built.data)
    zeros, rand = files["extra/zeros.bin"], files["extra/random.bin"]
    assert zeros.encoding == "deflate" and zeros.stored_size < zeros.size // 10
    assert zlib.decompress(stored["extra/zeros.bin"]) == bytes(5000) + b"tail"
    assert rand.encoding == "identity" and rand.stored_size == rand.size == 2000
    assert stored["extra/random.bin"] == np.random.default_rng(3).bytes(2000)
    for f in files.values():
        assert len(stored[f.path]) == f.stored_size


def test_deflate_only_when_it_saves_ten_percent(recipe, onnx_model, samples, release_key):
    rng = np.random.default_rng(5)
    # ~5 % compressible (tail of zeros) -> identity; ~50 % -> deflate
    slightly = rng.bytes(1900) + bytes(100)
    half = rng.bytes(1000) + bytes(1000)
    b = build_bundle(recipe, onnx_model, samples=samples, release_key=release_key,
                     extra_files={"s.bin": slightly, "h.bin": half, "empty.bin": b""})
    enc = {f.path: f.encoding for f in b.manifest.files}
    assert enc["s.bin"] == "identity" and enc["h.bin"] == "deflate" and enc["empty.bin"] == "identity"


def test_manifest_content(built, recipe, onnx_model, samples):
    m = built.manifest
    assert (m.name, m.version, m.build, m.runtime, m.model_file) == ("tiny-clf", "1.2.3", 7, "onnx", "model.onnx")
    assert [(t.name, t.dtype, t.shape) for t in m.inputs] == [("x", "float32", [None, 4])]
    assert [(t.name, t.dtype, t.shape) for t in m.outputs] == [("probs", "float32", [None, 3])]
    assert m.target.archs == ["x86_64", "aarch64"] and m.target.hardware_classes == ["cam-v2"]
    assert m.preprocessing == {"scale": 1.0} and m.labels == ["a", "b", "c"]
    assert m.lineage.recipe_digest == recipe.digest()
    assert m.lineage.source_digest == hashlib.sha256(onnx_model).hexdigest()
    assert m.file("model.onnx").sha256 == hashlib.sha256(onnx_model).hexdigest()
    assert m.format_version == 2 and m.profile_files is None and m.reference_profile == built.reference_profile()
    prof = built.reference_profile()
    assert prof.input == "x" and prof.samples == len(samples) and len(prof.features) == 4
    assert all(len(f.probs) == len(f.edges) + 1 <= 8 for f in prof.features)
    assert set(prof.predictions) <= {"a", "b", "c"} and abs(sum(prof.predictions.values()) - 1) < 1e-9
    smoke = built.smoke_test()
    assert (smoke.atol, smoke.rtol) == (1e-5, 1e-4)
    assert smoke.inputs["x"].dtype == np.float32 and np.array_equal(smoke.inputs["x"], samples[:3])


def test_smoke_vectors_reproduce_within_tolerance(built, trusted_release):
    v = verify_bundle(built.data, trusted=trusted_release)
    smoke = v.smoke_test()
    out = open_session("onnx", v.model).run(smoke.inputs)
    for name, exp in smoke.expected.items():
        assert np.all(np.abs(out[name] - exp) <= smoke.atol + smoke.rtol * np.abs(exp))
        assert not np.all(np.abs((out[name] + 0.01) - exp) <= smoke.atol + smoke.rtol * np.abs(exp))


def test_dict_samples_and_fewer_samples_than_vectors(recipe, onnx_model, release_key, samples):
    b = build_bundle(recipe, onnx_model, samples={"x": samples[:2]}, release_key=release_key)
    assert len(b.smoke_test().inputs["x"]) == 2 and b.manifest.smoke_test.vectors() == 2


def test_regimes_go_into_the_reference_profile_with_the_models_predictions(recipe, onnx_model, release_key,
                                                                           trusted_release, samples):
    shifted = samples + 3.0
    b = build_bundle(recipe, onnx_model, samples=samples, release_key=release_key,
                     regimes={"incident inc-1": shifted, "night": {"x": samples[:50] - 3.0}})
    prof = verify_bundle(b.data, trusted=trusted_release).reference_profile()
    assert prof == b.reference_profile()
    assert [(r.name, r.samples) for r in prof.regimes] == [("incident inc-1", len(samples)), ("night", 50)]
    assert prof.features == build_bundle(recipe, onnx_model, samples=samples,
                                         release_key=release_key).reference_profile().features
    classes = open_session("onnx", onnx_model).run({"x": shifted})["probs"].argmax(axis=1)
    expected = {label: float(np.mean(classes == i)) for i, label in enumerate("abc") if np.any(classes == i)}
    assert prof.regimes[0].predictions == pytest.approx(expected)


def test_add_signature_threshold_two(built, release_key, release_key2):
    t2 = keys.TrustedKeys.of([release_key.public_key(), release_key2.public_key()], role="release", threshold=2)
    with pytest.raises(SignatureError):
        verify_bundle(built.data, trusted=t2)
    both = add_signature(built.data, release_key2)
    v = verify_bundle(both, trusted=t2)
    assert v.signed_by == {keys.key_id(release_key.public_key()), keys.key_id(release_key2.public_key())}
    assert _split(both)[0] == _split(built.data)[0]  # manifest bytes untouched
    assert _split(both)[2] == _split(built.data)[2]  # files untouched
    again = add_signature(both, release_key2)       # re-signing replaces, never duplicates
    assert len(_split(again)[1]) == 2
    assert add_signature(both, release_key2) == again  # deterministic


def test_read_manifest_without_verification(built):
    manifest, _, stored = _split(built.data)
    unsigned = pack(manifest, [Signature(keyid="00" * 32, sig="AAAA")], stored)
    assert read_manifest(unsigned) == built.manifest
    with pytest.raises(UnknownKeyError):
        verify_bundle(unsigned, trusted=keys.TrustedKeys.of([keys.generate_private_key().public_key()],
                                                            role="release"))
    with pytest.raises(ArchiveError):
        read_manifest(b"garbage" * 100)


# --------------------------------------------------------------------------- refusals

def test_tampered_manifest(built, trusted_release):
    manifest, sigs, stored = _split(built.data)
    bad = pack(manifest.replace(b'"version":"1.2.3"', b'"version":"1.2.4"'), sigs, stored)
    with pytest.raises(SignatureError):
        verify_bundle(bad, trusted=trusted_release)
    bad = pack(manifest + b" ", sigs, stored)  # even insignificant whitespace breaks it
    with pytest.raises(SignatureError):
        verify_bundle(bad, trusted=trusted_release)


def test_unknown_release_key(built):
    other = keys.TrustedKeys.of([keys.generate_private_key().public_key()], role="release")
    with pytest.raises(UnknownKeyError):
        verify_bundle(built.data, trusted=other)


def test_tampered_file_content_same_size(built, trusted_release):
    manifest, sigs, stored = _split(built.data)
    rand = bytearray(stored["extra/random.bin"])
    rand[100] ^= 0xFF
    with pytest.raises(DigestMismatchError) as ei:
        verify_bundle(pack(manifest, sigs, {**stored, "extra/random.bin": bytes(rand)}), trusted=trusted_release)
    assert ei.value.where == "extra/random.bin"


def test_tampered_deflated_content(built, trusted_release):
    manifest, sigs, stored = _split(built.data)
    # a different deflate stream of the same length that inflates to other content
    fake = zlib.compress(bytes(4999) + b"tailx", 9)
    fake = fake[: len(stored["extra/zeros.bin"])].ljust(len(stored["extra/zeros.bin"]), b"\0")
    with pytest.raises((DigestMismatchError, ArchiveError)):
        verify_bundle(pack(manifest, sigs, {**stored, "extra/zeros.bin": fake}), trusted=trusted_release)


def test_tampered_stored_size(built, trusted_release):
    manifest, sigs, stored = _split(built.data)
    with pytest.raises(DigestMismatchError, match="stored size") as ei:
        verify_bundle(pack(manifest, sigs, {**stored, "model.onnx": stored["model.onnx"] + b"\0"}),
                      trusted=trusted_release)
    assert ei.value.where == "model.onnx"


def test_digest_mismatch_with_order(built, trusted_release):
    with pytest.raises(DigestMismatchError) as ei:
        verify_bundle(built.data, trusted=trusted_release, expected_digest="00" * 32)
    assert ei.value.code == "digest_mismatch"
    flipped = bytearray(built.data)
    flipped[-2000] ^= 1
    with pytest.raises(DigestMismatchError):
        verify_bundle(bytes(flipped), trusted=trusted_release, expected_digest=built.digest)


@pytest.mark.parametrize("delta", [-1, 1])
def test_size_mismatch_with_order(built, trusted_release, delta):
    with pytest.raises(SizeLimitError) as ei:
        verify_bundle(built.data, trusted=trusted_release, expected_size=len(built.data) + delta)
    assert ei.value.code == "size_limit"


def test_bundle_over_size_limit(built, trusted_release):
    with pytest.raises(SizeLimitError):
        verify_bundle(built.data, trusted=trusted_release, limits=BundleLimits(max_bundle_bytes=len(built.data) - 1))
    assert verify_bundle(built.data, trusted=trusted_release, limits=BundleLimits(max_bundle_bytes=len(built.data)))


def test_unpacked_over_limit(built, trusted_release):
    total = sum(f.size for f in built.manifest.files)
    with pytest.raises(SizeLimitError) as ei:
        verify_bundle(built.data, trusted=trusted_release, limits=BundleLimits(max_unpacked_bytes=total - 1))
    assert ei.value.where == "manifest.files"


def test_manifest_over_limit(built, trusted_release):
    with pytest.raises(SizeLimitError) as ei:
        verify_bundle(built.data, trusted=trusted_release, limits=BundleLimits(max_manifest_bytes=100))
    assert ei.value.where == "manifest.json"


def test_too_many_files(built, trusted_release):
    n = len(built.manifest.files)  # 3 + the array files
    with pytest.raises(ArchiveError, match="more than"):
        verify_bundle(built.data, trusted=trusted_release, limits=BundleLimits(max_files=n - 1))
    assert verify_bundle(built.data, trusted=trusted_release, limits=BundleLimits(max_files=n))


@pytest.mark.parametrize("name", ["/etc/passwd", "files/../../etc/passwd", "files/./model.onnx", "files//x",
                                  "../manifest.json", "files/a\\b", "files/"])
def test_unsafe_member_paths(built, trusted_release, name):
    data = _tar(_valid_members(built) + [_reg(name, b"evil")])
    with pytest.raises(ArchiveError) as ei:
        verify_bundle(data, trusted=trusted_release)
    assert ei.value.code == "unsafe_archive"


@pytest.mark.parametrize("kind,what", [
    (tarfile.SYMTYPE, "symlink"), (tarfile.LNKTYPE, "hard link"), (tarfile.CHRTYPE, "device"),
    (tarfile.BLKTYPE, "device"), (tarfile.DIRTYPE, "directory"), (tarfile.FIFOTYPE, "fifo"),
])
def test_non_regular_members(built, trusted_release, kind, what):
    data = _tar(_valid_members(built) + [_special("files/evil", kind, linkname="/etc/shadow")])
    with pytest.raises(ArchiveError, match=what) as ei:
        verify_bundle(data, trusted=trusted_release)
    assert ei.value.where == "files/evil"


def test_symlink_replacing_a_listed_file(built, trusted_release):
    members = [m for m in _valid_members(built) if m[0].name != "files/model.onnx"]
    data = _tar(members + [_special("files/model.onnx", tarfile.SYMTYPE, linkname="/etc/passwd")])
    with pytest.raises(ArchiveError, match="symlink"):
        verify_bundle(data, trusted=trusted_release)


def test_unexpected_member(built, trusted_release):
    with pytest.raises(ArchiveError, match="unexpected member"):
        verify_bundle(_tar(_valid_members(built) + [_reg("README", b"hi")]), trusted=trusted_release)


def test_unlisted_file(built, trusted_release):
    manifest, sigs, stored = _split(built.data)
    with pytest.raises(ArchiveError, match="not listed"):
        verify_bundle(pack(manifest, sigs, {**stored, "evil.so": b"\x7fELF"}), trusted=trusted_release)


def test_listed_file_missing(built, trusted_release):
    manifest, sigs, stored = _split(built.data)
    del stored["extra/random.bin"]
    with pytest.raises(ArchiveError, match="missing") as ei:
        verify_bundle(pack(manifest, sigs, stored), trusted=trusted_release)
    assert ei.value.where == "extra/random.bin"


@pytest.mark.parametrize("dup", ["manifest.json", "signatures.json", "files/model.onnx"])
def test_duplicate_member(built, trusted_release, dup):
    members = _valid_members(built)
    extra = next(m for m in members if m[0].name == dup)
    with pytest.raises(ArchiveError, match="duplicate"):
        verify_bundle(_tar(members + [_reg(dup, extra[1])]), trusted=trusted_release)


@pytest.mark.parametrize("missing", ["manifest.json", "signatures.json"])
def test_missing_manifest_or_signatures(built, trusted_release, missing):
    data = _tar([m for m in _valid_members(built) if m[0].name != missing])
    with pytest.raises(ArchiveError, match=f"missing {missing}"):
        verify_bundle(data, trusted=trusted_release)
    with pytest.raises(ArchiveError):
        read_manifest(data)


def test_malformed_signatures_json(built, trusted_release):
    members = [m for m in _valid_members(built) if m[0].name != "signatures.json"]
    for body in (b"not json", b'{"keyid": "x"}', b'[{"keyid": 1}]'):
        data = _tar([members[0], _reg("signatures.json", body)] + members[1:])
        with pytest.raises(ArchiveError) as ei:
            verify_bundle(data, trusted=trusted_release)
        assert ei.value.where == "signatures.json"


@pytest.mark.parametrize("cut", [100, 511, 1024, 2000, -1600, -1100])
def test_truncated_archive(built, trusted_release, cut):
    with pytest.raises(VerificationError) as ei:
        verify_bundle(built.data[:cut], trusted=trusted_release)
    assert isinstance(ei.value, (ArchiveError, DigestMismatchError))


@pytest.mark.parametrize("cut", [-1024, -512, -2, -1536])
def test_truncated_archive_with_order_digest(built, trusted_release, cut):
    # cuts that leave every member whole are still caught by the order's size and digest
    with pytest.raises(VerificationError):
        verify_bundle(built.data[:cut], trusted=trusted_release, expected_digest=built.digest,
                      expected_size=len(built.data))


@pytest.mark.parametrize("junk", [b"", b"\0" * 4096, b"garbage" * 1000, bytes(range(256)) * 4])
def test_garbage_bytes(trusted_release, junk):
    with pytest.raises(ArchiveError):
        verify_bundle(junk, trusted=trusted_release)


def test_deflate_bomb(built, trusted_release, release_key):
    """A (signed!) entry claims 1000 bytes but inflates to 50 MB: refused after at most size+1 bytes."""
    manifest = _manifest_dict(built)
    _, _, stored = _split(built.data)
    bomb = zlib.compress(bytes(50 * 1024 * 1024), 9)
    assert len(bomb) < 60_000
    entry = next(f for f in manifest["files"] if f["path"] == "extra/zeros.bin")
    entry.update(size=1000, sha256=hashlib.sha256(bytes(1000)).hexdigest(), encoding="deflate",
                 stored_size=len(bomb))
    with pytest.raises(SizeLimitError, match="inflates past") as ei:
        verify_bundle(_resign(manifest, {**stored, "extra/zeros.bin": bomb}, release_key), trusted=trusted_release)
    assert ei.value.where == "extra/zeros.bin"


def test_deflate_shorter_than_signed_size(built, trusted_release, release_key):
    manifest = _manifest_dict(built)
    _, _, stored = _split(built.data)
    short = zlib.compress(bytes(10))
    entry = next(f for f in manifest["files"] if f["path"] == "extra/zeros.bin")
    entry.update(size=11, sha256=hashlib.sha256(bytes(11)).hexdigest(), stored_size=len(short))
    with pytest.raises(DigestMismatchError):
        verify_bundle(_resign(manifest, {**stored, "extra/zeros.bin": short}, release_key), trusted=trusted_release)


def test_corrupt_deflate_stream(built, trusted_release, release_key):
    manifest = _manifest_dict(built)
    _, _, stored = _split(built.data)
    entry = next(f for f in manifest["files"] if f["path"] == "extra/zeros.bin")
    entry.update(stored_size=20)
    with pytest.raises(ArchiveError, match="corrupt deflate"):
        verify_bundle(_resign(manifest, {**stored, "extra/zeros.bin": b"\x00" * 20}, release_key),
                      trusted=trusted_release)


def test_signed_but_invalid_manifest(built, trusted_release, release_key):
    _, _, stored = _split(built.data)
    manifest = _manifest_dict(built)
    manifest["version"] = "one"
    with pytest.raises(VerificationError) as ei:
        verify_bundle(_resign(manifest, stored, release_key), trusted=trusted_release)
    assert ei.value.where == "manifest.version"
    raw = b"{not json"
    with pytest.raises(VerificationError):
        verify_bundle(pack(raw, [keys.sign(release_key, raw)], stored), trusted=trusted_release)


def test_signed_manifest_with_unsafe_file_path(built, trusted_release, release_key):
    _, _, stored = _split(built.data)
    manifest = _manifest_dict(built)
    manifest["files"][0]["path"] = "../escape"
    with pytest.raises(VerificationError) as ei:
        verify_bundle(_resign(manifest, stored, release_key), trusted=trusted_release)
    assert ei.value.where.startswith("manifest.files.0.path")


def test_model_file_not_listed(built, trusted_release, release_key):
    _, _, stored = _split(built.data)
    manifest = _manifest_dict(built)
    manifest["model_file"] = "other.onnx"
    with pytest.raises(VerificationError) as ei:
        verify_bundle(_resign(manifest, stored, release_key), trusted=trusted_release)
    assert ei.value.where == "manifest.model_file"


def test_verification_never_writes(built, trusted_release, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    verify_bundle(memoryview(built.data), trusted=trusted_release)
    assert list(tmp_path.iterdir()) == []


def test_bytes_outside_the_members_are_only_pinned_by_the_order(built, trusted_release):
    """A lost end marker or bytes appended after it change no member: the archive still verifies on
    its own, and only the order's size/digest (which a device always has) refuses it."""
    for variant in (built.data[:-2], built.data + b"appended"):
        assert verify_bundle(variant, trusted=trusted_release).manifest == built.manifest
        with pytest.raises((SizeLimitError, DigestMismatchError)):
            verify_bundle(variant, trusted=trusted_release, expected_digest=built.digest,
                          expected_size=len(built.data))
