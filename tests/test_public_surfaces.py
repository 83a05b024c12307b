"""Each package names its public surface in ``__all__``; every name resolves to what its home module
defines, and listing a surface does not make importing the package heavy."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ["edgefleet.protocol", "edgefleet.agent", "edgefleet.compression"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_public_name_resolves_to_its_home(name):
    package = importlib.import_module(name)
    assert set(package.__all__) == set(package._HOME)
    for public in package.__all__:
        home = importlib.import_module(f"{name}.{package._HOME[public]}")
        assert getattr(package, public) is getattr(home, public)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


@pytest.mark.parametrize(("module", "absent"), [("edgefleet.protocol.errors", "numpy"),
                                                ("edgefleet.protocol.vocabulary", "pydantic"),
                                                ("edgefleet.agent.backoff", "numpy"),
                                                ("edgefleet.compression.modes", "onnx")])
def test_importing_one_module_stays_light(module, absent):
    probe = f"import sys, {module}; print({absent!r} in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"
