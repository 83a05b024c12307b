"""Helpers shared by the protocol tests (a uniquely named module: every test folder has a conftest)."""

from __future__ import annotations

from onnx_models import mlp_onnx as make_onnx_model  # noqa: F401  (re-exported to the tests)

N_IN, N_OUT = 4, 3


RECIPE = {
    "bundle": {"name": "tiny-clf", "version": "1.2.3", "build": 7, "runtime": "onnx",
               "labels": ["a", "b", "c"], "description": "test bundle"},
    "target": {"archs": ["x86_64", "aarch64"], "hardware_classes": ["cam-v2"], "min_agent_version": "0.1.0"},
    "preprocessing": {"scale": 1.0},
    "smoke_test": {"vectors": 3, "atol": 1e-5, "rtol": 1e-4},
    "profile": {"bins": 8},
}
