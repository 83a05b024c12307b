"""Audit log: one row per state-changing call (who, what, when, details)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from edgefleet.cloud.store.tables import AuditEntry


def record(session: Session, *, actor: str, action: str, now: float, target: str = "",
           details: dict[str, Any] | None = None) -> AuditEntry:
    entry = AuditEntry(at=now, actor=actor, action=action, target=target, details=details or {})
    session.add(entry)
    return entry


def list_entries(session: Session, *, limit: int = 100, offset: int = 0, action: str | None = None,
                 actor: str | None = None, target: str | None = None, since: float | None = None,
                 until: float | None = None) -> list[AuditEntry]:
    """Newest first; ``action`` matches a prefix, ``since``/``until`` bound ``at`` (inclusive, exclusive)."""
    query = select(AuditEntry)
    if action:
        query = query.where(col(AuditEntry.action).startswith(action))
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if target:
        query = query.where(AuditEntry.target == target)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    return list(session.exec(query.order_by(col(AuditEntry.id).desc()).offset(offset).limit(limit)))


def list_actions(session: Session) -> list[str]:
    """Every action the log holds, sorted (what a filter can offer)."""
    return sorted(session.exec(select(AuditEntry.action).distinct()))
