"""pyproject.toml installs every folder of the four packages (a missing one works in an editable
install and breaks a wheel) and keeps the UI's templates and static files."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"protocol": "edgefleet.protocol", "agent": "edgefleet.agent", "compression": "edgefleet.compression",
            "cloud": "edgefleet.cloud"}


def _config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_source_folder_is_a_listed_package():
    folders = set()
    for folder, name in PACKAGES.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".html", ".css", ".js", ".svg") \
                    and "__pycache__" not in path.parts:
                rel = path.parent.relative_to(ROOT / folder)
                folders.add(".".join([name, *rel.parts]))
    assert folders == set(_config()["packages"])


def test_every_python_folder_has_an_init():
    missing = [str(p.parent.relative_to(ROOT)) for folder in PACKAGES for p in (ROOT / folder).rglob("*.py")
               if not (p.parent / "__init__.py").exists()]
    assert missing == []


def test_ui_data_files_are_package_data():
    data = _config()["package-data"]
    assert data["edgefleet.cloud.ui.templates"] == ["*.html"] and data["edgefleet.cloud.ui.static"] == ["*"]
