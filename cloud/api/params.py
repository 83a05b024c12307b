"""Bounded parameters shared by the routes: an integer the database cannot hold, a string longer than
any id or name the controller makes, or a number that is not finite is a 422, never a 500 (SQLite and
PostgreSQL keep ids and offsets in signed 64-bit integers). tests/cloud/test_api_bounds.py walks the
OpenAPI schema and fails on any path or query parameter without such bounds."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

MAX_INT = 2**63 - 1
"""The largest integer a BIGINT column (and SQLite's INTEGER) holds."""
MAX_ID = 128
"""Longer than any id the controller makes (device ids, ``dep-``/``ro-``/``ex-`` ids, digests, key ids)."""
MAX_TIME = 1e11
"""Unix seconds in the year 5138: later than any time the controller stores."""

RowId = Annotated[int, Path(ge=1, le=MAX_INT, description="a row id")]
Offset = Annotated[int, Query(ge=0, le=MAX_INT, description="rows to skip")]

DeviceIdPath = Annotated[str, Path(min_length=1, max_length=64, description="a device id")]
NamePath = Annotated[str, Path(min_length=1, max_length=128, description="a registry model name")]
VersionPath = Annotated[str, Path(min_length=1, max_length=64, description="a model version")]
DigestPath = Annotated[str, Path(min_length=1, max_length=64, description="a bundle digest (or a unique prefix)")]
IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID, description="an id the controller gave")]

TagQuery = Annotated[str | None, Query(max_length=64, description="a device tag")]
DeviceIdQuery = Annotated[str | None, Query(max_length=64, description="a device id")]
TextQuery = Annotated[str | None, Query(max_length=256)]
Since = Annotated[float | None, Query(ge=0, le=MAX_TIME, allow_inf_nan=False, description="Unix seconds")]
