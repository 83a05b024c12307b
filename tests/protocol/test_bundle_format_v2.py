"""Bundle format 2: smoke vectors (and big reference profiles) as .npy files of the bundle, signed
through the file table; format 1 bundles (everything inline) still verified, installed and read."""

import hashlib
import io
import json
import tarfile
import zlib

import numpy as np
import onnx
import pytest
from bundlekit import to_format_1, wide_model

from edgefleet.agent.inference import load_model, smoke_test
from edgefleet.protocol import keys
from edgefleet.protocol.bundle import _encode, build_bundle, pack, parse_recipe, verify_bundle
from edgefleet.protocol.bundle_arrays import generate, npy_bytes, read_npy, smoke_files, splitmix64
from edgefleet.protocol.canonical import canonical_json
from edgefleet.protocol.drift import FeatureBinner
from edgefleet.protocol.errors import ArchiveError, ConfigError, DigestMismatchError, InferenceError, VerificationError
from edgefleet.protocol.manifest import ArrayFile, GeneratedArray
from edgefleet.protocol.messages import Signature
from edgefleet.protocol.runtimes import open_session

from protocolkit import RECIPE, make_onnx_model


def _split(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """(manifest as a dict, stored files) of a bundle, via plain tarfile."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {i.name: tar.extractfile(i).read() for i in tar}
    return json.loads(members["manifest.json"]), {k[len("files/"):]: v for k, v in members.items()
                                                  if k.startswith("files/")}


def _signatures(data: bytes) -> list[Signature]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [Signature.model_validate(s) for s in json.loads(tar.extractfile("signatures.json").read())]


def _fortran() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)))
    return buf.getvalue()


def _decoded(manifest: dict, stored: dict[str, bytes], path: str) -> bytes:
    entry = next(f for f in manifest["files"] if f["path"] == path)
    return zlib.decompress(stored[path]) if entry["encoding"] == "deflate" else stored[path]


def _with_file(manifest: dict, stored: dict[str, bytes], path: str, content: bytes, key) -> bytes:
    """The bundle with ``path`` replaced by ``content``, its file entry updated, signed by ``key``."""
    encoding, packed = _encode(content)
    entry = next(f for f in manifest["files"] if f["path"] == path)
    entry.update(size=len(content), sha256=hashlib.sha256(content).hexdigest(), encoding=encoding,
                 stored_size=len(packed))
    raw = canonical_json(manifest)
    return pack(raw, [keys.sign(key, raw)], {**stored, path: packed})


@pytest.fixture(scope="module")
def wide(release_key):
    images = np.random.default_rng(1).normal(0, 1, (8, 3, 224, 224)).astype(np.float32)
    recipe = parse_recipe({**RECIPE, "smoke_test": {"vectors": 4, "atol": 1e-5, "rtol": 1e-4}, "bundle": {
        **RECIPE["bundle"], "labels": None}})
    return build_bundle(recipe, wide_model(), samples=images, release_key=release_key), images


def _loaded(verified, digest="00" * 32):
    return load_model(verified, digest=digest, slot="a", window_start=0.0)


# --------------------------------------------------------------------------- layout

def test_smoke_vectors_are_npy_files_in_the_signed_file_table(built, trusted_release, samples):
    manifest, stored = _split(built.data)
    assert manifest["format_version"] == 2
    smoke = manifest["smoke_test"]
    assert smoke["inputs"] == {"x": {"file": "smoke/inputs/x.npy", "dtype": "float32", "shape": [3, 4]}}
    assert smoke["expected"] == {"probs": {"file": "smoke/expected/probs.npy", "dtype": "float32", "shape": [3, 3]}}
    assert (smoke["atol"], smoke["rtol"]) == (1e-5, 1e-4)
    v = verify_bundle(built.data, trusted=trusted_release)
    entry = v.manifest.file("smoke/inputs/x.npy")
    assert entry.sha256 == hashlib.sha256(v.files["smoke/inputs/x.npy"]).hexdigest()
    assert np.load(io.BytesIO(v.files["smoke/inputs/x.npy"]), allow_pickle=False).tobytes() == samples[:3].tobytes()
    assert np.array_equal(v.smoke_test().inputs["x"], samples[:3])


def test_a_tampered_smoke_file_is_refused(built, trusted_release):
    manifest, stored = _split(built.data)
    bad = bytearray(stored["smoke/expected/probs.npy"])
    bad[-1] ^= 1  # same size: the signed sha256 (or the deflate stream's checksum) catches it
    with pytest.raises((DigestMismatchError, ArchiveError)) as ei:
        verify_bundle(pack(canonical_json(manifest), _signatures(built.data),
                           {**stored, "smoke/expected/probs.npy": bytes(bad)}), trusted=trusted_release)
    assert ei.value.where == "smoke/expected/probs.npy"


@pytest.mark.parametrize("content,match", [
    (npy_bytes(np.zeros((2, 4), np.float32)), r"header says <f4 \[2, 4\]"),
    (npy_bytes(np.zeros((3, 4), np.float64)), "header says <f8"),
    (npy_bytes(np.zeros((3, 4), np.float32)) + b"\0" * 4, "data is 52 bytes"),
    (_fortran(), "Fortran"),
    (b"not an npy file at all", "not a valid .npy"),
])
def test_a_smoke_file_that_is_not_what_the_manifest_declares_is_refused(built, trusted_release, release_key,
                                                                       content, match):
    manifest, stored = _split(built.data)
    with pytest.raises(VerificationError, match=match) as ei:
        verify_bundle(_with_file(manifest, stored, "smoke/inputs/x.npy", content, release_key), trusted=trusted_release)
    assert ei.value.where == "smoke/inputs/x.npy"


def test_a_pickled_npy_is_refused_never_loaded(built, trusted_release, release_key):
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}, None, 3], dtype=object), allow_pickle=True)
    manifest, stored = _split(built.data)
    with pytest.raises(VerificationError, match=r"header says \|O"):
        verify_bundle(_with_file(manifest, stored, "smoke/inputs/x.npy", buf.getvalue(), release_key),
                      trusted=trusted_release)


def test_tensor_names_that_are_not_paths_get_safe_unique_file_names(samples):
    inputs = {"serving_default_x:0": samples[:2], "serving_default_x/0": samples[:2]}
    files, test, _ = smoke_files(inputs, lambda feeds: {"out:0": feeds["serving_default_x:0"]}, model_bytes=0,
                                 atol=0, rtol=0)
    assert [v.file for v in test.inputs.values()] == ["smoke/inputs/serving_default_x_0.npy",
                                                      "smoke/inputs/serving_default_x_0-1.npy"]
    assert test.expected["out:0"].file == "smoke/expected/out_0.npy" and set(files) == {
        "smoke/inputs/serving_default_x_0.npy", "smoke/inputs/serving_default_x_0-1.npy", "smoke/expected/out_0.npy"}


def test_extra_files_may_not_use_the_builders_names(recipe, onnx_model, samples, release_key):
    with pytest.raises(ConfigError) as ei:
        build_bundle(recipe, onnx_model, samples=samples, release_key=release_key,
                     extra_files={"smoke/inputs/x.npy": b"mine"})
    assert ei.value.where == "extra_files"


# --------------------------------------------------------------------------- wide inputs

def test_wide_input_vectors_are_a_few_percent_of_the_bundle(wide, trusted_release):
    built, images = wide
    v = verify_bundle(built.data, trusted=trusted_release)
    spec = v.manifest.smoke_test.inputs["x"]
    assert isinstance(spec, GeneratedArray) and spec.shape == [4, 3, 224, 224] and spec.dtype == "float32"
    assert (spec.low, spec.high) == (float(images[:4].min()), float(images[:4].max()))
    smoke_files = [f for f in v.manifest.files if f.path.startswith("smoke/")]
    share = (sum(512 + f.stored_size for f in smoke_files) + len(canonical_json(
        v.manifest.model_dump(mode="json")["smoke_test"]))) / len(built.data)
    assert share < 0.03
    assert len(built.data) < 1.2 * len(wide_model())
    smoke = v.smoke_test()
    x = smoke.inputs["x"]
    assert x.shape == (4, 3, 224, 224) and spec.low <= x.min() and x.max() <= spec.high and x.std() > 0.5
    np.testing.assert_array_equal(open_session("onnx", v.model).run({"x": x})["probs"], smoke.expected["probs"])


def test_the_agent_passes_the_wide_smoke_test_and_fails_a_wrong_expectation(wide, trusted_release, release_key):
    built, _ = wide
    smoke_test(_loaded(verify_bundle(built.data, trusted=trusted_release)))
    manifest, stored = _split(built.data)
    ref = manifest["smoke_test"]["expected"]["probs"]
    wrong = read_npy(_decoded(manifest, stored, ref["file"]), ArrayFile.model_validate(ref)) + 0.01
    bad = verify_bundle(_with_file(manifest, stored, ref["file"], npy_bytes(wrong), release_key),
                        trusted=trusted_release)
    with pytest.raises(InferenceError) as ei:
        smoke_test(_loaded(bad))
    assert ei.value.code == "smoke_test_failed"


def test_generator_is_splitmix64_and_keeps_integers_in_range():
    assert [hex(int(x)) for x in splitmix64(0, 2)] == ["0xe220a8397b1dcdaf", "0x6e789e6aa1b965f4"]
    ints = generate(GeneratedArray(seed=7, low=0, high=255, dtype="uint8", shape=[64, 64]))
    assert ints.dtype == np.uint8 and ints.min() == 0 and ints.max() == 255
    assert len(np.unique(ints)) == 256
    floats = generate(GeneratedArray(seed=7, low=-1.5, high=2.0, dtype="float32", shape=[1000]))
    assert floats.dtype == np.float32 and -1.5 <= floats.min() < -1.4 and 1.9 < floats.max() <= 2.0
    assert np.array_equal(floats, generate(GeneratedArray(seed=7, low=-1.5, high=2.0, dtype="float32",
                                                          shape=[1000])))
    with pytest.raises(ValueError, match="finite interval"):
        GeneratedArray(seed=1, low=2.0, high=1.0, dtype="float32", shape=[1])


# --------------------------------------------------------------------------- the profile as files

def test_a_wide_profile_goes_to_files_and_reads_back_exactly(release_key, trusted_release):
    n_in = 64
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, n_in)).astype(np.float32)
    recipe = parse_recipe({**RECIPE, "profile": {"bins": 10}})
    built = build_bundle(recipe, make_onnx_model(n_in=n_in), samples=x, release_key=release_key,
                         regimes={"shifted": x + 1.0})
    m = built.manifest
    assert m.reference_profile is None and m.profile_files is not None and m.profile_files.features == n_in
    assert {f.path for f in m.files} >= {"profile/bins.npy", "profile/edges.npy", "profile/probs.npy",
                                         "profile/regime_probs.npy"}
    assert "features" not in m.profile_files.profile and "probs" not in m.profile_files.profile["regimes"][0]
    v = verify_bundle(built.data, trusted=trusted_release)
    prof = v.reference_profile()
    assert prof == built.reference_profile()
    assert prof.model_dump() == built.profile.model_dump()  # bit-exact edges (float32) and probs (float64)
    counts = FeatureBinner(prof).counts(x[:50])
    assert np.array_equal(counts, FeatureBinner(built.profile).counts(x[:50]))
    stored = v.manifest_with_profile().model_dump(mode="json")  # what the controller keeps for its pages
    assert stored["reference_profile"]["thresholds"]["psi_alarm"] == 0.25
    assert stored["reference_profile"]["regimes"][0]["name"] == "shifted"
    # the agent's window statistics get the profile
    assert _loaded(v).stats.profile == prof
    inline = json.loads(canonical_json(prof.model_dump(mode="json")))
    assert len(canonical_json(inline)) > sum(512 + f.stored_size for f in m.files if f.path.startswith("profile/"))


def test_profile_files_that_do_not_fit_together_are_refused(release_key, trusted_release):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 64)).astype(np.float32)
    built = build_bundle(parse_recipe(RECIPE), make_onnx_model(n_in=64), samples=x, release_key=release_key,
                         regimes={"shifted": x + 1.0})
    manifest, stored = _split(built.data)
    manifest["profile_files"]["profile"]["regimes"] = []  # one regime in the arrays, none listed
    raw = canonical_json(manifest)
    with pytest.raises(VerificationError, match="lists 0 regimes") as ei:
        verify_bundle(pack(raw, [keys.sign(release_key, raw)], stored), trusted=trusted_release)
    assert ei.value.where == "manifest.profile_files.profile.regimes"


# --------------------------------------------------------------------------- format 1 and versions

def test_a_format_1_bundle_is_verified_installed_and_read(built, release_key, trusted_release):
    old = to_format_1(built.data, release_key, trusted_release)
    manifest, stored = _split(old)
    assert manifest["format_version"] == 1 and isinstance(manifest["smoke_test"]["inputs"]["x"], list)
    assert not any(p.startswith("smoke/") for p in stored) and "profile_files" not in manifest
    v = verify_bundle(old, trusted=trusted_release)
    new = verify_bundle(built.data, trusted=trusted_release)
    assert v.reference_profile() == new.reference_profile() == v.manifest.reference_profile
    for a, b in ((v.smoke_test().inputs, new.smoke_test().inputs), (v.smoke_test().expected,
                                                                      new.smoke_test().expected)):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    model = _loaded(v)
    smoke_test(model)  # the agent's health check on the old layout
    assert model.stats.profile == new.reference_profile()
    assert v.manifest_with_profile().reference_profile == v.manifest.reference_profile


def test_a_format_1_bundle_with_a_wrong_expectation_fails_the_agents_smoke_test(built, release_key, trusted_release):
    manifest, stored = _split(to_format_1(built.data, release_key, trusted_release))
    manifest["smoke_test"]["expected"]["probs"][0][0] += 0.5
    raw = canonical_json(manifest)
    with pytest.raises(InferenceError):
        smoke_test(_loaded(verify_bundle(pack(raw, [keys.sign(release_key, raw)], stored), trusted=trusted_release)))


@pytest.mark.parametrize("change,match", [
    (lambda m: m.update(format_version=3), "bundle format 3 is not one this agent reads"),
    (lambda m: m.update(format_version=1), "format 1 manifest keeps smoke vectors and profile inline"),
    (lambda m: m["smoke_test"]["inputs"].update(x=[[0.0, 0.0, 0.0, 0.0]]), "names smoke vectors as files"),
    (lambda m: m["smoke_test"]["inputs"]["x"].update(file="smoke/inputs/other.npy"), "is not among the files"),
])
def test_manifests_that_mix_the_formats_are_refused(built, release_key, trusted_release, change, match):
    manifest, stored = _split(built.data)
    change(manifest)
    raw = canonical_json(manifest)
    with pytest.raises(VerificationError, match=match):
        verify_bundle(pack(raw, [keys.sign(release_key, raw)], stored), trusted=trusted_release)


def test_format_2_model_file_bytes_are_untouched(built, trusted_release):
    v = verify_bundle(built.data, trusted=trusted_release)
    assert v.model == make_onnx_model() and onnx.load_from_string(v.model).graph.input[0].name == "x"
