"""The house rules of docs/architecture.md, checked on the source: which package may import
which, which room of the controller may import which, and that web pages and routes leave the
database to the services. Every import counts, also one inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "protocol": set(),
    "agent": {"protocol"},
    "compression": {"protocol"},
    "cloud": {"protocol", "compression"},
}

# The controller's rooms (sub-packages) and top-level modules, and what each may import directly.
ROOMS: dict[str, set[str]] = {
    "store": set(),
    "services": {"store", "metrics"},
    "mqtt": {"services", "store", "metrics", "ports"},
    "api": {"services", "store", "deps"},
    "ui": {"services", "store", "deps"},
    "cli": set(),
    "settings": set(),
    "metrics": set(),
    "ports": set(),
    "background": set(),
    "vocabulary": set(),
    "deps": {"controller", "services"},
    "controller": {"background", "metrics", "mqtt", "ports", "services", "settings", "store"},
    "app": {"api", "controller", "settings", "ui"},
    "server": {"app", "controller", "settings"},
    "simulate": set(),
}
SHARED = {"vocabulary"}
"""Modules every room may use."""
STARTS_A_CONTROLLER = {"cli/serve.py": {"server", "settings"}, "cli/demo.py": {"ports", "server", "settings"}}
"""The two CLI modules that start a controller themselves; every other command speaks HTTP..."""
WORKS_ON_THE_DATABASE = {"cli/db.py": {"settings", "store"}}
"""...but ``edgefleet db``, which upgrades the configured database's schema (a controller may not start on it)."""
DRIVES_THE_SIMULATOR = {"cli/simulate.py": {"simulate"}}
"""``edgefleet simulate`` runs the fleet simulator, which speaks to a controller over HTTP and MQTT only;
no other room imports it (the controller's runtime never does)."""
NO_QUERIES = ("api", "ui")
"""Rooms whose code calls services instead of querying: no sqlalchemy, from sqlmodel only Session."""


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every absolute import in the file (``names`` empty for ``import x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
    return found


def imported_packages(path: Path) -> set[str]:
    return {module.split(".")[1] for module, _ in imports(path)
            if module.startswith("edgefleet.") and len(module.split(".")) > 1}


def cloud_rooms_imported(path: Path) -> set[str]:
    rooms = set()
    for module, names in imports(path):
        parts = module.split(".")
        if parts[:2] != ["edgefleet", "cloud"]:
            continue
        rooms |= {parts[2]} if len(parts) > 2 else set(names)
    return rooms


def room_of(path: Path) -> str:
    rel = path.relative_to(ROOT / "cloud")
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def cloud_sources() -> list[Path]:
    return sorted(p for p in (ROOT / "cloud").rglob("*.py") if p.name != "__init__.py" or p.parent != ROOT / "cloud")


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no sources under {package}/"
    offenders = {}
    for path in files:
        bad = imported_packages(path) - ALLOWED[package] - {package}
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_every_controller_module_is_in_a_known_room():
    unknown = sorted(str(p.relative_to(ROOT)) for p in cloud_sources() if room_of(p) not in ROOMS)
    assert unknown == [], "add the new room to ROOMS in tests/test_import_rules.py and docs/architecture.md"


def test_controller_rooms_import_only_what_they_may():
    offenders = {}
    for path in cloud_sources():
        room = room_of(path)
        rel = str(path.relative_to(ROOT / "cloud"))
        allowed = (ROOMS.get(room, set()) | STARTS_A_CONTROLLER.get(rel, set()) | WORKS_ON_THE_DATABASE.get(rel, set())
                   | DRIVES_THE_SIMULATOR.get(rel, set())
                   | SHARED | {room})
        bad = cloud_rooms_imported(path) - allowed
        if bad:
            offenders[rel] = sorted(bad)
    assert offenders == {}


@pytest.mark.parametrize("room", NO_QUERIES)
def test_pages_and_routes_leave_queries_to_the_services(room):
    offenders = {}
    for path in sorted((ROOT / "cloud" / room).rglob("*.py")):
        for module, names in imports(path):
            top = module.split(".")[0]
            if top == "sqlalchemy" or (top == "sqlmodel" and set(names) - {"Session"}):
                offenders.setdefault(str(path.relative_to(ROOT)), []).append(module)
    assert offenders == {}


def test_the_checkers_see_forbidden_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("from edgefleet.cloud.app import create_app\nimport edgefleet.protocol.keys\n"
                      "def f():\n    from edgefleet.cloud import mqtt, store\n    from sqlmodel import select\n")
    assert imported_packages(source) == {"cloud", "protocol"}
    assert cloud_rooms_imported(source) == {"app", "mqtt", "store"}
    assert ("sqlmodel", ["select"]) in imports(source)
