"""Bounded parameters shared by the routes: an integer the database cannot hold is a 422, never a 500
(SQLite and PostgreSQL keep ids and offsets in signed 64-bit integers)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_INT = 2**63 - 1
"""The largest integer a BIGINT column (and SQLite's INTEGER) holds."""

RowId = Annotated[int, Path(ge=1, le=MAX_INT, description="a row id")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="rows to skip")]
