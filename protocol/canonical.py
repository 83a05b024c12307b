"""Canonical JSON: the exact bytes that are signed.

Keys sorted, no insignificant whitespace, UTF-8, no NaN/Infinity. A verifier in another
language reproduces these bytes with any JSON library that sorts keys (see docs/bundle-format.md).
"""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")
