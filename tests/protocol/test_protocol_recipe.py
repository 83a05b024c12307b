import copy

import pytest

from edgefleet.protocol.bundle import load_recipe, parse_recipe
from edgefleet.protocol.errors import ConfigError, TargetMismatchError
from edgefleet.protocol.manifest import BundleManifest, DeviceFacts, TargetConstraints, check_target, parse_semver

from protocolkit import RECIPE

GOOD_TOML = """
[bundle]
name = "digits-mlp"
version = "1.4.0"
build = 12
runtime = "onnx"
model = "models/digits.onnx"
labels = ["0", "1"]

[target]
archs = ["x86_64"]
hardware_classes = ["gateway"]
min_agent_version = "0.2.0"

[preprocessing]
scale = 0.0625
layout = "NC"

[smoke_test]
vectors = 8
atol = 1e-3
rtol = 1e-2

[profile]
bins = 12

[drift]
psi_warn = 0.15
psi_alarm = 0.3
min_samples = 100

[compression]
method = "dynamic_int8"
max_accuracy_drop = 0.01
"""


def test_load_recipe(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text(GOOD_TOML)
    r = load_recipe(path)
    assert r.path == path
    assert (r.bundle.name, r.bundle.version, r.bundle.build, r.bundle.runtime) == ("digits-mlp", "1.4.0", 12, "onnx")
    assert r.model_path() == (tmp_path / "models" / "digits.onnx").resolve()
    assert r.target.archs == ["x86_64"] and r.target.min_agent_version == "0.2.0"
    assert r.preprocessing == {"scale": 0.0625, "layout": "NC"}
    assert (r.smoke_test.vectors, r.smoke_test.atol, r.smoke_test.rtol) == (8, 1e-3, 1e-2)
    assert r.profile.bins == 12
    assert (r.drift.psi_warn, r.drift.psi_alarm, r.drift.min_samples) == (0.15, 0.3, 100)
    assert r.compression == {"method": "dynamic_int8", "max_accuracy_drop": 0.01}  # passed through untouched


def test_recipe_defaults_and_digest():
    r = parse_recipe({"bundle": {"name": "m", "version": "0.1.0", "build": 0, "runtime": "tflite"}})
    assert r.model_path() is None
    assert r.target.archs == [] and r.smoke_test.vectors == 4 and r.profile.bins == 10
    assert r.compression is None
    assert len(r.digest()) == 64
    assert r.digest() == parse_recipe({"bundle": {"name": "m", "version": "0.1.0", "build": 0,
                                                  "runtime": "tflite"}}).digest()
    assert r.digest() != parse_recipe({"bundle": {"name": "m", "version": "0.1.0", "build": 1,
                                                  "runtime": "tflite"}}).digest()


def _with(path: tuple, value):
    data = copy.deepcopy(RECIPE)
    node = data
    for p in path[:-1]:
        node = node.setdefault(p, {})
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


@pytest.mark.parametrize("path,value,where", [
    (("bundle", "name"), KeyError, "bundle.name"),
    (("bundle", "name"), "Has Spaces", "bundle.name"),
    (("bundle", "version"), "1.0", "bundle.version"),
    (("bundle", "build"), -1, "bundle.build"),
    (("bundle", "runtime"), "pytorch", "bundle.runtime"),
    (("bundle", "modle"), "typo.onnx", "bundle.modle"),
    (("bundle",), KeyError, "bundle"),
    (("target", "arch"), ["x86_64"], "target.arch"),           # typo must not mean "any arch"
    (("target", "min_agent_version"), "latest", "target.min_agent_version"),
    (("smoke_test", "vectors"), 0, "smoke_test.vectors"),
    (("smoke_test", "vectors"), 65, "smoke_test.vectors"),
    (("smoke_test", "atol"), -1.0, "smoke_test.atol"),
    (("profile", "bins"), 1, "profile.bins"),
    (("profile", "bin"), 5, "profile.bin"),
    (("drift", "psi_alrm"), 0.3, "drift.psi_alrm"),
    (("unknown_section",), {}, "unknown_section"),
])
def test_parse_recipe_errors_name_the_key(path, value, where):
    with pytest.raises(ConfigError) as ei:
        parse_recipe(_with(path, value), where="r.toml")
    assert ei.value.where == f"r.toml: {where}"
    assert ei.value.code == "bad_config"


@pytest.mark.parametrize("text", ["[bundle\nname = 1", "name = = 2", "[bundle]\nname = 'a'\nname = 'b'\n"])
def test_load_recipe_bad_toml(tmp_path, text):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="invalid TOML") as ei:
        load_recipe(path)
    assert ei.value.where == str(path)


def test_load_recipe_missing_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_recipe(tmp_path / "nope.toml")
    assert ei.value.where == str(tmp_path / "nope.toml")


def test_load_recipe_invalid_content_names_file_and_key(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[bundle]\nname = "x"\nversion = "1.0.0"\nbuild = 1\nruntime = "caffe"\n')
    with pytest.raises(ConfigError) as ei:
        load_recipe(path)
    assert ei.value.where == f"{path}: bundle.runtime"


# --------------------------------------------------------------------------- check_target

def _facts(**kw) -> DeviceFacts:
    base = dict(arch="x86_64", runtimes=["onnx", "tflite"], agent_version="0.3.0", hardware_class="cam-v2")
    base.update(kw)
    return DeviceFacts(**base)


@pytest.fixture(scope="module")
def manifest(built) -> BundleManifest:
    return built.manifest.model_copy(update={"target": TargetConstraints(
        archs=["x86_64", "aarch64"], hardware_classes=["cam-v2"], min_agent_version="0.2.0")})


def test_check_target_ok(manifest):
    check_target(manifest, _facts())
    check_target(manifest, _facts(arch="aarch64", runtimes=["onnx"], agent_version="0.2.0"))


@pytest.mark.parametrize("facts,where,code", [
    (dict(runtimes=["tflite"]), "manifest.runtime", "runtime_unavailable"),
    (dict(runtimes=[]), "manifest.runtime", "runtime_unavailable"),
    (dict(arch="armv7l"), "manifest.target.archs", "target_mismatch"),
    (dict(hardware_class="generic"), "manifest.target.hardware_classes", "target_mismatch"),
    (dict(agent_version="0.1.9"), "manifest.target.min_agent_version", "target_mismatch"),
    (dict(agent_version="0.2.0-rc1"), None, None),  # prerelease compares by MAJOR.MINOR.PATCH only
    (dict(agent_version="garbage"), "manifest.target.min_agent_version", "target_mismatch"),
])
def test_check_target_refusals(manifest, facts, where, code):
    if where is None:
        check_target(manifest, _facts(**facts))
        return
    with pytest.raises(TargetMismatchError) as ei:
        check_target(manifest, _facts(**facts))
    assert ei.value.where == where and ei.value.code == code


def test_empty_constraints_mean_any(manifest):
    m = manifest.model_copy(update={"target": TargetConstraints()})
    check_target(m, _facts(arch="riscv64", hardware_class="anything", agent_version="0.1.0"))


def test_tflite_bundle_on_onnx_only_device_has_hint(manifest):
    m = manifest.model_copy(update={"runtime": "tflite"})
    with pytest.raises(TargetMismatchError) as ei:
        check_target(m, _facts(runtimes=["onnx"]))
    assert ei.value.code == "runtime_unavailable" and "tflite" in ei.value.hint


@pytest.mark.parametrize("v,expected", [("0.1.0", (0, 1, 0)), ("10.20.30", (10, 20, 30)),
                                        ("1.0.0-rc.1+build.5", (1, 0, 0))])
def test_parse_semver(v, expected):
    assert parse_semver(v) == expected


@pytest.mark.parametrize("v", ["1", "1.0", "01.0.0", "v1.0.0", "1.0.0.0", ""])
def test_parse_semver_refuses(v):
    with pytest.raises(ValueError):
        parse_semver(v)
