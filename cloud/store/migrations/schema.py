"""The controller's schema version (Alembic, configured here: no ``alembic.ini`` is read or needed).

What a database is, seen from this release (:func:`inspect_schema`), and what the controller does with
it when it starts (:data:`STARTUP`, a table over that state and ``database_auto_upgrade``):

============== =================================================== =============================
state          the database                                        at start
============== =================================================== =============================
empty          none of our tables                                  ``create_all`` + stamp head
current        ``alembic_version`` at head                         nothing
behind         ``alembic_version`` at an older revision            refuse (auto: upgrade)
legacy_current no ``alembic_version``, tables shaped like head      stamp head
legacy_behind  no ``alembic_version``, shaped like an older one    refuse (auto: stamp + upgrade)
foreign        no ``alembic_version``, shaped like no revision     refuse
unknown        a revision this release does not know (newer?)      refuse
============== =================================================== =============================

"Shaped like" compares table and column names with the schema each revision leaves (computed once per
process on an in-memory SQLite database), so a database made by the last release before migrations
(revision 0001) or by a development version between two revisions is recognised, and anything else is
refused with its differences instead of being guessed at. ``edgefleet db upgrade`` does what an
automatic upgrade does, up to any revision. Downgrades are not supported: restore the backup.
"""

from __future__ import annotations

import functools
import logging
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import ops
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool, StaticPool
from sqlmodel import SQLModel

from edgefleet.cloud.store import tables  # noqa: F401  (registers the tables on SQLModel.metadata)
from edgefleet.protocol.errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent
VERSION_TABLE = "alembic_version"
_PG_LOCK_KEY = 0x6564676566  # "edgef": one schema change at a time among controllers sharing a database

Shape = dict[str, frozenset[str]]
"""Table name -> column names."""


class SchemaState(StrEnum):
    EMPTY = "empty"
    CURRENT = "current"
    BEHIND = "behind"
    LEGACY_CURRENT = "legacy_current"
    LEGACY_BEHIND = "legacy_behind"
    FOREIGN = "foreign"
    UNKNOWN = "unknown"


class SchemaAction(StrEnum):
    CREATE = "create"
    """``create_all`` and stamp head (same schema as upgrading from nothing: tests/cloud/test_migrations.py)."""
    NOTHING = "nothing"
    STAMP = "stamp"
    """Write the revision the tables are shaped like into ``alembic_version`` (no table changes)."""
    UPGRADE = "upgrade"
    STAMP_UPGRADE = "stamp_upgrade"
    REFUSE = "refuse"


STARTUP: dict[tuple[SchemaState, bool], SchemaAction] = {
    # (state, database_auto_upgrade) -> what the controller does when it starts
    (SchemaState.EMPTY, False): SchemaAction.CREATE,
    (SchemaState.EMPTY, True): SchemaAction.CREATE,
    (SchemaState.CURRENT, False): SchemaAction.NOTHING,
    (SchemaState.CURRENT, True): SchemaAction.NOTHING,
    (SchemaState.BEHIND, False): SchemaAction.REFUSE,
    (SchemaState.BEHIND, True): SchemaAction.UPGRADE,
    (SchemaState.LEGACY_CURRENT, False): SchemaAction.STAMP,
    (SchemaState.LEGACY_CURRENT, True): SchemaAction.STAMP,
    (SchemaState.LEGACY_BEHIND, False): SchemaAction.REFUSE,
    (SchemaState.LEGACY_BEHIND, True): SchemaAction.STAMP_UPGRADE,
    (SchemaState.FOREIGN, False): SchemaAction.REFUSE,
    (SchemaState.FOREIGN, True): SchemaAction.REFUSE,
    (SchemaState.UNKNOWN, False): SchemaAction.REFUSE,
    (SchemaState.UNKNOWN, True): SchemaAction.REFUSE,
}

UPGRADE: dict[SchemaState, SchemaAction] = {
    # what ``edgefleet db upgrade`` does (an empty database runs every revision from the first)
    SchemaState.EMPTY: SchemaAction.UPGRADE,
    SchemaState.CURRENT: SchemaAction.UPGRADE,
    SchemaState.BEHIND: SchemaAction.UPGRADE,
    SchemaState.LEGACY_CURRENT: SchemaAction.STAMP_UPGRADE,
    SchemaState.LEGACY_BEHIND: SchemaAction.STAMP_UPGRADE,
    SchemaState.FOREIGN: SchemaAction.REFUSE,
    SchemaState.UNKNOWN: SchemaAction.REFUSE,
}


class DatabaseSchemaError(ConfigError):
    """The database's schema is not one this release can run on (yet). ``where`` is the database URL."""


@dataclass(frozen=True)
class SchemaStatus:
    state: SchemaState
    revision: str | None
    """The revision in ``alembic_version``; for a legacy database, the one its tables are shaped like."""
    head: str
    differences: tuple[str, ...] = ()
    """For a foreign database: how its tables differ from the nearest revision's."""


@dataclass(frozen=True)
class RevisionInfo:
    revision: str
    down_revision: str | None
    title: str
    is_head: bool


def migration_options(connection: Connection) -> dict[str, Any]:
    """How Alembic compares and migrates (env.py, the drift check and new revisions use the same)."""
    return {"target_metadata": SQLModel.metadata, "render_as_batch": connection.dialect.name == "sqlite",
            "compare_type": True, "compare_server_default": True, "version_table": VERSION_TABLE,
            "process_revision_directives": review_new_revision}


def review_new_revision(_context: Any, _revision: Any, directives: list[Any]) -> None:
    """What autogenerate writes, made to work on both databases: a foreign key added to an existing table gets
    PostgreSQL's own name for it (SQLite's batch mode needs a name; ``create_all`` leaves it to the database);
    a NOT NULL column added to an existing table without a server default is refused (the upgrade would fail on
    every table with rows)."""
    refused: list[str] = []
    for table_ops in directives[0].upgrade_ops.ops:
        if not isinstance(table_ops, ops.ModifyTableOps):
            continue
        for op in table_ops.ops:
            if isinstance(op, ops.CreateForeignKeyOp) and op.constraint_name is None:
                op.constraint_name = f"{op.source_table}_{'_'.join(op.local_cols)}_fkey"
            if isinstance(op, ops.AddColumnOp) and not op.column.nullable and op.column.server_default is None:
                refused.append(f"{op.table_name}.{op.column.name}")
    if refused:
        raise DatabaseSchemaError(f"NOT NULL columns added to existing tables without a server default: "
                                  f"{', '.join(refused)}", where="edgefleet.cloud.store.tables",
                                  hint="give each one in tables.py, e.g. Field(default=False, sa_column_kwargs="
                                       "{\"server_default\": \"0\"}), then run the command again")


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("version_path_separator", "os")
    config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    heads = script_directory().get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads {heads}: merge them into one (docs/operations.md)")
    return heads[0]


def history() -> list[RevisionInfo]:
    """Every revision, oldest first."""
    head = head_revision()
    revisions = list(script_directory().walk_revisions())[::-1]
    return [RevisionInfo(revision=r.revision, down_revision=_single(r.down_revision),
                         title=(r.doc or "").strip().splitlines()[0] if r.doc else "", is_head=r.revision == head)
            for r in revisions]


def _single(down: str | Sequence[str] | None) -> str | None:
    if down is None or isinstance(down, str):
        return down
    return ",".join(down)


def shape(connection: Connection) -> Shape:
    inspector = inspect(connection)
    return {name: frozenset(c["name"] for c in inspector.get_columns(name))
            for name in inspector.get_table_names() if name != VERSION_TABLE}


@functools.cache
def revision_shapes() -> tuple[tuple[str, Shape], ...]:
    """The tables each revision leaves, oldest first (upgrading an in-memory SQLite database step by step)."""
    engine = create_engine("sqlite://", poolclass=StaticPool)
    shapes: list[tuple[str, Shape]] = []
    try:
        with engine.connect() as conn:
            for info in history():
                try:
                    command.upgrade(alembic_config(conn), info.revision)
                except SQLAlchemyError as exc:
                    raise DatabaseSchemaError(f"schema revision {info.revision} fails on an empty database: "
                                              f"{getattr(exc, 'orig', None) or exc}", where=str(MIGRATIONS_DIR),
                                              hint="fix the revision (this is a bug of the release)") from exc
                conn.commit()
                shapes.append((info.revision, shape(conn)))
    finally:
        engine.dispose()
    return tuple(shapes)


def _shape_differences(have: Shape, want: Shape) -> list[str]:
    out = []
    for name in sorted(want.keys() & have.keys()):
        parts = [f"{what} {', '.join(sorted(cols))}" for what, cols in
                 (("unexpected", have[name] - want[name]), ("missing", want[name] - have[name])) if cols]
        if parts:
            out.append(f"{name} columns {' and '.join(parts)}")
    for what, names in (("unexpected", have.keys() - want.keys()), ("missing", want.keys() - have.keys())):
        if names:
            out.append(f"{len(names)} tables {what}: {', '.join(sorted(names))}")
    return out


def _legacy_status(have: Shape, head: str) -> SchemaStatus:
    shapes = revision_shapes()
    for revision, want in reversed(shapes):
        if want == have:
            state = SchemaState.LEGACY_CURRENT if revision == head else SchemaState.LEGACY_BEHIND
            return SchemaStatus(state=state, revision=revision, head=head)
    nearest = min(shapes, key=lambda item: len(_shape_differences(have, item[1])))
    return SchemaStatus(state=SchemaState.FOREIGN, revision=None, head=head,
                        differences=tuple([f"closest to revision {nearest[0]}"]
                                          + _shape_differences(have, nearest[1])))


def inspect_schema(connection: Connection) -> SchemaStatus:
    """Where the database stands (reads only)."""
    head = head_revision()
    names = set(inspect(connection).get_table_names())
    if not names & set(SQLModel.metadata.tables):
        return SchemaStatus(state=SchemaState.EMPTY, revision=None, head=head)
    revision = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision() \
        if VERSION_TABLE in names else None
    if revision is None:
        return _legacy_status(shape(connection), head)
    if revision == head:
        return SchemaStatus(state=SchemaState.CURRENT, revision=revision, head=head)
    if revision in {info.revision for info in history()}:
        return SchemaStatus(state=SchemaState.BEHIND, revision=revision, head=head)
    return SchemaStatus(state=SchemaState.UNKNOWN, revision=revision, head=head)


def refusal(status: SchemaStatus, where: str) -> DatabaseSchemaError:
    if status.state in (SchemaState.BEHIND, SchemaState.LEGACY_BEHIND):
        made = "" if status.state == SchemaState.BEHIND else " (made before schema migrations)"
        return DatabaseSchemaError(
            f"the database is at schema revision {status.revision}{made}, this release needs {status.head}",
            where=where, hint="back it up, then run 'edgefleet db upgrade' (or set "
                              "EDGEFLEET_DATABASE_AUTO_UPGRADE=true to upgrade when the controller starts); "
                              "docs/operations.md, Upgrading")
    if status.state == SchemaState.UNKNOWN:
        return DatabaseSchemaError(
            f"the database is at schema revision {status.revision}, which this release does not know "
            f"(its newest is {status.head}): a newer release made it", where=where,
            hint="run the release that made it, or restore a backup made by this one")
    return DatabaseSchemaError(
        "the database has tables but no schema revision, and they match no revision of this release ("
        + "; ".join(status.differences[:12]) + (" ..." if len(status.differences) > 12 else "") + ")",
        where=where, hint="point database_url at an empty database or at one an EdgeFleet release made")


@contextmanager
def _schema_lock(engine: Engine) -> Iterator[Connection]:
    """One transaction in which the schema is looked at and changed, all or nothing, one process at a time.

    PostgreSQL: DDL is transactional; an advisory lock makes controllers starting together on one database
    take turns. SQLite: a connection of its own in which the driver leaves transactions to us (``BEGIN
    IMMEDIATE``, the write lock, taken first), so a failed revision leaves no half-copied table; foreign keys are
    off while batch mode copies tables (SQLite's advice) and checked before the commit."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield conn
        return
    own = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": 30})
    event.listen(own, "connect", _driver_autocommit)
    event.listen(own, "begin", _begin_immediate)
    try:
        with own.begin() as conn:
            yield conn
            violations = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if violations:
                raise DatabaseSchemaError(f"the migrated tables break {len(violations)} foreign keys "
                                          f"(first: {tuple(violations[0])}); nothing was changed",
                                          where=engine.url.render_as_string(hide_password=True),
                                          hint="fix the revision that moved these rows")
    finally:
        own.dispose()


def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # pysqlite would commit before each DDL statement otherwise


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _apply(conn: Connection, status: SchemaStatus, action: SchemaAction, target: str) -> None:
    try:
        _apply_steps(conn, status, action, target)
    except SQLAlchemyError as exc:
        raise DatabaseSchemaError(f"{action} to schema revision {target} failed, nothing was changed: "
                                  f"{getattr(exc, 'orig', None) or exc}",
                                  where=conn.engine.url.render_as_string(hide_password=True),
                                  hint="the database is as it was; keep the message for a bug report") from exc


def _apply_steps(conn: Connection, status: SchemaStatus, action: SchemaAction, target: str) -> None:
    if action in (SchemaAction.STAMP, SchemaAction.STAMP_UPGRADE):
        assert status.revision is not None  # legacy states always name the revision they match
        MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).stamp(script_directory(),
                                                                                      status.revision)
        log.info("database made before schema migrations stamped at revision %s", status.revision)
    if action == SchemaAction.CREATE:
        SQLModel.metadata.create_all(conn)
        if VERSION_TABLE in inspect(conn).get_table_names():  # left behind by someone who dropped our tables
            conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
        MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).stamp(script_directory(), "heads")
    if action in (SchemaAction.UPGRADE, SchemaAction.STAMP_UPGRADE):
        command.upgrade(alembic_config(conn), target)
        log.info("database schema upgraded from %s to %s", status.revision or "nothing", target)


def prepare(engine: Engine, *, auto_upgrade: bool) -> SchemaStatus:
    """Make the database ready for this release at start (:data:`STARTUP`), or raise :class:`DatabaseSchemaError`
    without changing anything."""
    where = engine.url.render_as_string(hide_password=True)
    with _schema_lock(engine) as conn:
        status = inspect_schema(conn)
        action = STARTUP[(status.state, auto_upgrade)]
        if action == SchemaAction.REFUSE:
            raise refusal(status, where)
        _apply(conn, status, action, status.head)
    return status


def upgrade(engine: Engine, *, to: str = "head") -> tuple[SchemaStatus, SchemaStatus]:
    """``edgefleet db upgrade``: the status before and after."""
    where = engine.url.render_as_string(hide_password=True)
    known = {info.revision for info in history()} | {"head", "heads"}
    if to not in known:
        raise DatabaseSchemaError(f"no schema revision {to!r}", where="--to",
                                  hint=f"one of {', '.join(sorted(known - {'heads'}))} ('edgefleet db history')")
    with _schema_lock(engine) as conn:
        before = inspect_schema(conn)
        action = UPGRADE[before.state]
        if action == SchemaAction.REFUSE:
            raise refusal(before, where)
        if before.revision is not None and to not in ("head", "heads") \
                and script_directory().get_revision(to) in _ancestors_strict(before.revision):
            raise DatabaseSchemaError(f"the database is at {before.revision}, past {to}", where="--to",
                                      hint="downgrades are not supported: restore the backup taken before upgrading")
        _apply(conn, before, action, to)
        after = inspect_schema(conn)
    return before, after


def _ancestors_strict(revision: str) -> set[Any]:
    return set(script_directory().iterate_revisions(revision, "base")) - {script_directory().get_revision(revision)}


def drift(connection: Connection) -> list[Any]:
    """What ``SQLModel.metadata`` has that the database has not, or the other way round (Alembic's
    autogenerate diff; empty when a revision exists for every change of ``tables.py``)."""
    context = MigrationContext.configure(connection, opts=migration_options(connection))
    return list(compare_metadata(context, SQLModel.metadata))


def next_revision_id() -> str | None:
    """``0003`` after ``0002``; ``None`` (Alembic picks a random id) if some id is not a number."""
    ids = [info.revision for info in history()]
    if not all(re.fullmatch(r"\d{4}", rid) for rid in ids):
        return None
    return f"{max(int(rid) for rid in ids) + 1:04d}"


def new_revision(message: str) -> Path:
    """Write a revision for what ``tables.py`` has and head has not (autogenerate against a scratch SQLite
    database upgraded to head) into ``versions/``; returns its path. Review it before committing."""
    with tempfile.TemporaryDirectory() as scratch:
        engine = create_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        try:
            with engine.connect() as conn:
                command.upgrade(alembic_config(conn), "head")
                conn.commit()
                if not drift(conn):
                    raise DatabaseSchemaError(f"tables.py and revision {head_revision()} describe the same schema",
                                              where="edgefleet.cloud.store.tables",
                                              hint="change the tables first; no revision written")
                with warnings.catch_warnings():  # about downgrade directives, which revisions do not have
                    warnings.filterwarnings("ignore", "Autogenerate rendered a drop_constraint", UserWarning)
                    script = command.revision(alembic_config(conn), message=message, autogenerate=True,
                                              rev_id=next_revision_id())
        finally:
            engine.dispose()
    script_directory.cache_clear()
    revision_shapes.cache_clear()
    if script is None or isinstance(script, list):
        raise RuntimeError("alembic wrote no single revision")
    return Path(script.path)
