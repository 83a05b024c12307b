"""The ``[capture]`` recipe table and the signed manifest's ``capture`` field (bundle-format.md §2.6)."""

from __future__ import annotations

import copy
import json

import pytest

from edgefleet.protocol.bundle import MANIFEST, _members, build_bundle, parse_recipe, verify_bundle
from edgefleet.protocol.errors import ConfigError

from protocolkit import RECIPE


def test_a_recipe_without_capture_signs_no_capture_field(built, trusted_release):
    raw = json.loads(bytes(_members(memoryview(built.data), _limits())[MANIFEST]))
    assert "capture" not in raw                                   # byte-identical to bundles built before it
    assert verify_bundle(built.data, trusted=trusted_release).manifest.capture is None
    assert "capture" not in parse_recipe(RECIPE).model_dump(mode="json")   # the recipe digest is unchanged


def test_capture_is_signed_into_the_manifest(onnx_model, samples, release_key, trusted_release, recipe):
    opted = copy.deepcopy(RECIPE) | {"capture": {"enabled": True, "max_samples": 100, "drift_weight": 8.0,
                                                 "min_samples_to_upload": 20, "upload_interval_s": 600}}
    r = parse_recipe(opted)
    assert r.digest() != recipe.digest()
    bundle = build_bundle(r, onnx_model, samples=samples, release_key=release_key)
    policy = verify_bundle(bundle.data, trusted=trusted_release).manifest.capture
    assert policy is not None and (policy.enabled, policy.max_samples, policy.max_bytes, policy.drift_weight) == \
        (True, 100, 8 * 1024 * 1024, 8.0)
    tampered = bundle.data.replace(b'"max_samples":100', b'"max_samples":900')   # same length: a valid tar
    assert tampered != bundle.data
    with pytest.raises(Exception) as exc:
        verify_bundle(tampered, trusted=trusted_release)
    assert exc.value.code == "bad_signature"                      # only a release key sets the policy


@pytest.mark.parametrize(("capture", "where"), [
    ({"enable": True}, "capture.enable"),
    ({"max_samples": 0}, "capture.max_samples"),
    ({"max_bytes": 1024}, "capture.max_bytes"),
    ({"drift_weight": 0.5}, "capture.drift_weight"),
    ({"max_samples": 10, "min_samples_to_upload": 11}, "capture"),
    ({"enabled": "yes"}, "capture.enabled"),
])
def test_capture_errors_name_the_key(capture, where):
    with pytest.raises(ConfigError) as exc:
        parse_recipe(copy.deepcopy(RECIPE) | {"capture": capture}, where="r.toml")
    assert exc.value.where == f"r.toml: {where}"


def _limits():
    from edgefleet.protocol.bundle import BundleLimits
    return BundleLimits()
