"""The ``edgefleet`` command line (typer + rich). :mod:`app` builds it from one module per command
group; fleet commands talk to a controller only through :mod:`client` (HTTP), except ``serve``
and ``demo`` (:mod:`serve`), which start one.

:func:`main` is the console script. It is installed with every install of the distribution, an
agent-only one included; there it says which extra it needs instead of failing on an import.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

NEEDS = ("typer", "rich", "httpx2")


def main(argv: list[str] | None = None) -> int:
    missing = [name for name in NEEDS if find_spec(name) is None]
    if missing:
        print(f"error: the edgefleet CLI needs the 'cloud' extra ({', '.join(missing)} missing): "
              "pip install 'edgefleet[cloud]'. On a device, run edgefleet-agent instead.", file=sys.stderr)
        return 2
    from edgefleet.cloud.cli.app import run

    return run(argv)
