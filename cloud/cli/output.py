"""Output helpers shared by the CLI commands: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from edgefleet.protocol.vocabulary import DriftLevel

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """A compact table (no vertical rules) that fits 80 columns where it can: headers are never
    broken inside a word, cells wrap between words, the first column (an id people copy) never wraps."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                  collapse_padding=True)
    for i, c in enumerate(columns):
        table.add_column(c, overflow="fold", no_wrap=i == 0, min_width=max(len(w) for w in c.split()))
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def print_fields(fields: dict[str, Any]) -> None:
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        console.print(f"[bold]{key.ljust(width)}[/]  {'' if value is None else value}", highlight=False)


def short(digest: str | None, n: int = 12) -> str:
    return (digest or "")[:n]


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    delta = max(0.0, time.time() - ts)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def installed_label(installed: dict[str, Any] | None) -> str:
    if not installed:
        return "-"
    return f"{installed.get('name')} {installed.get('version')}+{installed.get('build')}"




def ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def drift_levels(summary: dict[str, Any]) -> str:
    """How many windows were judged at each drift level, worst first (``few``: too few samples)."""
    levels = summary["drift"].get("levels", {})
    names = {DriftLevel.ALARM: "alarm", DriftLevel.WARN: "warn", DriftLevel.OK: "ok", DriftLevel.INSUFFICIENT: "few"}
    return ", ".join(f"{names[k]} {levels[k]}" for k in names if levels.get(k)) or "-"


def accuracy(summary: dict[str, Any]) -> str:
    """Accuracy over the labels the application gave back, with their count (``-`` without labels)."""
    feedback = summary.get("feedback") or {}
    if not feedback.get("labelled"):
        return "-"
    return f"{100 * feedback['accuracy']:.1f}% of {feedback['labelled']}"
