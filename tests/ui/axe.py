"""axe-core (Deque's accessibility engine, from the npm registry) for the browser tests: installed with
npm on first use into a cache directory outside the repository, then evaluated in each page (through
the DevTools protocol, so the pages' Content-Security-Policy stays as it is)."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

AXE_VERSION = "4.14.1"
IMPACTS = ("serious", "critical")
"""Violations that fail a test; minor and moderate ones are reported by axe but not asserted on."""


def cache_dir() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "edgefleet" / f"axe-core-{AXE_VERSION}"


def axe_source() -> str | None:
    """The text of ``axe.min.js``: ``EDGEFLEET_AXE_JS`` (a file), else the cache, installed with npm if
    missing; ``None`` when neither is there and npm is not installed."""
    given = os.environ.get("EDGEFLEET_AXE_JS")
    if given:
        return Path(given).read_text()
    js = cache_dir() / "node_modules" / "axe-core" / "axe.min.js"
    if not js.is_file():
        npm = shutil.which("npm")
        if npm is None:
            return None
        cache_dir().mkdir(parents=True, exist_ok=True)
        with open(cache_dir() / ".install.lock", "w") as lock:   # test processes running side by side
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not js.is_file():
                subprocess.run([npm, "install", "--prefix", str(cache_dir()), "--no-save", "--no-audit", "--no-fund",
                                "--ignore-scripts", "--loglevel=error", f"axe-core@{AXE_VERSION}"],
                               check=True, timeout=300, stdout=subprocess.DEVNULL)
    return js.read_text()


RUN = """async () => {
  const result = await window.axe.run(document, {resultTypes: ["violations"]});
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                      nodes: v.nodes.slice(0, 3).map(n => n.target.join(" "))}));
}"""


def violations(page, source: str) -> list[dict]:
    """axe's serious and critical violations on the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(source)
    return [v for v in page.evaluate(RUN) if v["impact"] in IMPACTS]
