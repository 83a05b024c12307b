"""Database engine and schema. SQLite (default, a file in the data dir) or any SQLAlchemy URL.

The schema is versioned with Alembic (:mod:`edgefleet.cloud.store.migrations`): a new database is created at
the newest revision, an older one is upgraded by ``edgefleet db upgrade`` (or at start with
``database_auto_upgrade``), docs/operations.md, "Upgrading".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pydantic_core
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, create_engine

from edgefleet.cloud.store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from edgefleet.cloud.store.migrations import schema

log = logging.getLogger(__name__)

OpenSession = Callable[[], AbstractContextManager[Session]]

DatabaseUnavailable = OperationalError
"""What a query raises when the database does not answer (restarted, unreachable, out of connections):
the API answers it with 503 and ``Retry-After`` (cloud/api/errors.py)."""
"""What long-running work (reconciler passes, job runners) is given: a factory of sessions, one
transaction each (``Controller.session``)."""


def _to_json(value: object) -> str:
    return pydantic_core.to_json(value).decode("utf-8")


def make_engine(url: str) -> Engine:
    """JSON columns are serialized by pydantic-core (Rust): the ingest path writes several per row."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               json_serializer=_to_json)
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, json_serializer=_to_json)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_schema(engine: Engine, *, auto_upgrade: bool = False) -> None:
    """Make the database ready at start (:data:`schema.STARTUP`): create a new one at the newest schema
    revision, refuse an older one with "run edgefleet db upgrade" (:class:`schema.DatabaseSchemaError`)
    unless ``auto_upgrade``."""
    status = schema.prepare(engine, auto_upgrade=auto_upgrade)
    log.info("database schema ready on %s at revision %s (found: %s)", engine.url.render_as_string(hide_password=True),
             status.head, status.state)


def ping(session: Session) -> None:
    """Raise if the database does not answer (readiness checks)."""
    session.connection().execute(text("SELECT 1"))


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
