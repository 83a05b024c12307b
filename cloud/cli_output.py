"""Output helpers shared by the CLI commands: rich tables for people, ``--json`` for scripts."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, overflow="fold", no_wrap=i == 0)  # keep ids whole: people copy them
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def print_fields(fields: dict[str, Any]) -> None:
    width = max((len(k) for k in fields), default=0)
    for key, value in fields.items():
        console.print(f"[bold]{key.ljust(width)}[/]  {'' if value is None else value}", highlight=False)


def short(digest: str | None, n: int = 12) -> str:
    return (digest or "")[:n]
