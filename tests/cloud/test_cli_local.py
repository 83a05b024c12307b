"""The CLI's local commands (no controller): keys, bundle build/sign/verify/inspect, and errors."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefleet.cloud.cli import main as cli


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEFLEET_CLI_CONFIG", str(tmp_path / "absent.toml"))
    rng = np.random.default_rng(1)
    # weights big enough that int8 pays (a 16 x 4 matrix gets larger, which compress refuses)
    w1 = numpy_helper.from_array(rng.normal(size=(16, 256)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(256, 4)).astype(np.float32), "w2")
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w1"], ["hidden"]),
                               helper.make_node("MatMul", ["hidden", "w2"], ["logits"]),
                               helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1)], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 16])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 4])],
                              [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (tmp_path / "model.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "samples.npy", rng.random((64, 16)).astype(np.float32))
    (tmp_path / "recipe.toml").write_text(
        '[bundle]\nname = "tiny"\nversion = "0.3.0"\nbuild = 2\nruntime = "onnx"\nmodel = "model.onnx"\n')
    return tmp_path


def run(capsys, *args):
    capsys.readouterr()
    rc = cli(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_keys_generate_writes_private_key_0600_and_refuses_to_overwrite(capsys, workdir):
    rc, out, _ = run(capsys, "keys", "generate", "release", "--out", "k", "--json")
    assert rc == 0
    info = json.loads(out)
    assert stat.S_IMODE(os.stat(info["private"]).st_mode) == 0o600
    rc, out, _ = run(capsys, "keys", "show", "k/release.pub")
    assert out.strip() == info["key_id"]
    rc, _, err = run(capsys, "keys", "generate", "release", "--out", "k")
    assert rc != 0 and "refusing to overwrite" in err


def test_bundle_build_is_reproducible_and_verifies(capsys, workdir):
    run(capsys, "keys", "generate", "release", "--out", "k")
    args = ["bundle", "build", "recipe.toml", "--key", "k/release.key", "--samples", "samples.npy", "--json"]
    rc, out, err = run(capsys, *args, "--out", "a.efb")
    assert rc == 0, err
    first = json.loads(out)
    rc, out, _ = run(capsys, *args, "--out", "b.efb")
    assert json.loads(out)["digest"] == first["digest"]
    assert (workdir / "a.efb").read_bytes() == (workdir / "b.efb").read_bytes()
    rc, out, _ = run(capsys, "bundle", "verify", "a.efb", "--trusted", "k/release.pub", "--json")
    assert rc == 0 and json.loads(out)["ok"] is True
    rc, out, _ = run(capsys, "bundle", "inspect", "a.efb", "--json")
    manifest = json.loads(out)["manifest"]
    assert (manifest["name"], manifest["version"], manifest["build"]) == ("tiny", "0.3.0", 2)
    assert manifest["smoke_test"]["inputs"]["input"]["shape"][0] == 4   # format 2: a .npy file of the bundle
    rc, out, _ = run(capsys, "bundle", "inspect", "a.efb")
    assert "tiny" in out and "model.onnx" in out


def test_threshold_signing_with_bundle_sign(capsys, workdir):
    run(capsys, "keys", "generate", "r1", "--out", "k")
    run(capsys, "keys", "generate", "r2", "--out", "k")
    run(capsys, "bundle", "build", "recipe.toml", "--key", "k/r1.key", "--samples", "samples.npy", "--out", "t.efb")
    verify = ["bundle", "verify", "t.efb", "--trusted", "k/r1.pub", "--trusted", "k/r2.pub", "--threshold", "2"]
    rc, _, err = run(capsys, *verify)
    assert rc != 0 and "1 valid release signature(s), 2 required" in err
    assert run(capsys, "bundle", "sign", "t.efb", "--key", "k/r2.key")[0] == 0
    assert run(capsys, *verify)[0] == 0


def test_verify_refuses_a_bundle_signed_by_another_key(capsys, workdir):
    run(capsys, "keys", "generate", "release", "--out", "k")
    run(capsys, "keys", "generate", "other", "--out", "k")
    run(capsys, "bundle", "build", "recipe.toml", "--key", "k/other.key", "--samples", "samples.npy", "--out", "o.efb")
    rc, _, err = run(capsys, "bundle", "verify", "o.efb", "--trusted", "k/release.pub")
    assert rc == 1 and "no signature by a trusted release key" in err


@pytest.mark.parametrize("args, message", [
    (["bundle", "build", "missing.toml", "--key", "k/release.key"], "cannot read recipe"),
    (["bundle", "build", "recipe.toml", "--key", "k/none.key"], "cannot read private key"),
    (["bundle", "build", "recipe.toml", "--key", "k/release.key", "--samples", "nope.npy"], "sample file not found"),
    (["bundle", "inspect", "model.onnx"], "not a valid bundle archive"),
    (["bundle", "verify", "model.onnx", "--trusted", "model.onnx"], "not a PEM public key"),
])
def test_errors_are_one_clear_line(capsys, workdir, args, message):
    run(capsys, "keys", "generate", "release", "--out", "k")
    rc, _, err = run(capsys, *args)
    assert rc != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_recipe_with_an_unknown_key_names_it(capsys, workdir):
    run(capsys, "keys", "generate", "release", "--out", "k")
    (workdir / "recipe.toml").write_text((workdir / "recipe.toml").read_text() + 'colour = "red"\n')
    rc, _, err = run(capsys, "bundle", "build", "recipe.toml", "--key", "k/release.key", "--samples", "samples.npy")
    assert rc == 2 and "bundle.colour" in err


def test_bundle_build_compress_applies_the_recipe_reproducibly(capsys, workdir):
    run(capsys, "keys", "generate", "release", "--out", "k")
    recipe = workdir / "recipe.toml"
    recipe.write_text(recipe.read_text() + '[compression]\nmode = "dynamic_int8"\n'
                      '[compression.gate]\nmin_top1_agreement = 0.9\n')
    args = ["bundle", "build", "recipe.toml", "--key", "k/release.key", "--samples", "samples.npy", "--compress",
            "--json"]
    digests = [json.loads(run(capsys, *args, "--out", f"{n}.efb")[1])["digest"] for n in ("a", "b")]
    assert digests[0] == digests[1]  # latency measured while compressing stays out of the manifest
    manifest = json.loads(run(capsys, "bundle", "inspect", "a.efb", "--json")[1])["manifest"]
    assert manifest["compression"]["mode"] == "dynamic_int8" and "latency" not in manifest["compression"]
    assert manifest["compression"]["gate"]["passed"] is True
    assert manifest["compression"]["size"]["compressed_bytes"] == manifest["files"][0]["size"]  # the variant ships
    assert manifest["lineage"]["parent_digest"] is not None


def test_bundle_build_embeds_a_given_compression_report(capsys, workdir):
    run(capsys, "keys", "generate", "release", "--out", "k")
    (workdir / "report.json").write_text('{"mode": "fp16", "note": "made elsewhere"}')
    base = ["bundle", "build", "recipe.toml", "--key", "k/release.key", "--samples", "samples.npy"]
    assert run(capsys, *base, "--compression-report", "report.json", "--out", "r.efb")[0] == 0
    manifest = json.loads(run(capsys, "bundle", "inspect", "r.efb", "--json")[1])["manifest"]
    assert manifest["compression"] == {"mode": "fp16", "note": "made elsewhere"}
    (workdir / "bad.json").write_text("not json")
    rc, _, err = run(capsys, *base, "--compression-report", "bad.json")
    assert rc == 2 and "not JSON" in err
