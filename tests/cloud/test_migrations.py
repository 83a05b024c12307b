"""Schema migrations (cloud/store/migrations, docs/operations.md "Upgrading").

A database made by the last release before migrations (768c803; tests/cloud/fixtures/make_release_db.py made
the SQLite file and the PostgreSQL dump) is upgraded to head on SQLite and PostgreSQL with every row kept; the
migrated schema equals what ``tables.py`` declares (a change without its revision fails here); upgrading twice
is a no-op; the controller refuses a database behind head unless told to upgrade it. Downgrades are not
supported (restore the backup), so none is tested.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import MetaData, inspect, select, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import SQLModel

from edgefleet.cloud.app import create_app
from edgefleet.cloud.store import tables
from edgefleet.cloud.store.engine import create_schema, make_engine
from edgefleet.cloud.store.migrations import schema
from edgefleet.cloud.store.migrations.schema import (
    STARTUP,
    UPGRADE,
    DatabaseSchemaError,
    SchemaAction,
    SchemaState,
)

from cloudkit import ADMIN, FakeClock, FakeTransport, cli_runner

FIXTURES = Path(__file__).parent / "fixtures"
RELEASE_DB = FIXTURES / "release-768c803.db"
RELEASE_PG = FIXTURES / "release-768c803.pg.sql"
RELEASE_TOKENS = json.loads((FIXTURES / "release-768c803.tokens.json").read_text())
RELEASE_DEVICES = {"rel-1": ["lab"], "rel-2": ["eu", "lab"], "rel-3": ["eu"]}
ADDED_SINCE_RELEASE = {("devices", "broker_disable_pending"): False, ("api_tokens", "user_id"): None,
                       ("api_tokens", "expires_at"): None, ("api_tokens", "last_used_at"): None,
                       ("api_tokens", "ui_session"): False}
"""Columns revisions after the baseline add to the release's tables, and what old rows get."""
TABLES_SINCE_RELEASE = {"users", "leases", "device_transitions", "fleet_snapshots"}
"""Tables revisions after the baseline add (empty after an upgrade)."""

BACKENDS = ["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.integration])]


@pytest.fixture
def new_database(request, tmp_path):
    """``new_database(backend) -> URL`` of an empty database: a SQLite file, or a PostgreSQL database of its
    own (dropped afterwards; skipped or failed as ``pg_url`` says when PostgreSQL is not there)."""
    made: list[str] = []
    numbers = itertools.count()

    def make(backend: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'db{next(numbers)}' / 'controller.db'}"
        url = make_url(request.getfixturevalue("pg_url"))
        name = f"{url.database}_{next(numbers)}"
        with _admin(url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return url.set(database=name).render_as_string(hide_password=False)

    yield make
    if made:
        url = make_url(request.getfixturevalue("pg_url"))
        with _admin(url) as conn:
            for name in made:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _admin(url: Any) -> psycopg.Connection:
    return psycopg.connect(host=url.host, port=url.port, user=url.username, dbname="test", autocommit=True)


@pytest.fixture
def release_database(new_database):
    """``release_database(backend) -> URL`` of a database as release 768c803 left it, with its data."""
    def make(backend: str) -> str:
        url = new_database(backend)
        if backend == "sqlite":
            path = Path(make_url(url).database or "")
            path.parent.mkdir(parents=True)
            shutil.copyfile(RELEASE_DB, path)
        else:
            load_dump(url, RELEASE_PG)
        return url
    return make


def load_dump(url: str, dump: Path) -> None:
    """A plain-SQL ``pg_dump`` (``--inserts``) without psql's meta-commands."""
    sql = "\n".join(line for line in dump.read_text().splitlines() if not line.startswith("\\"))
    parsed = make_url(url)
    with psycopg.connect(host=parsed.host, port=parsed.port, user=parsed.username, dbname=parsed.database) as conn:
        conn.execute(sql)  # type: ignore[call-overload]  # a dump: one script, no parameters


def rows(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table (but alembic_version), in primary-key order."""
    meta = MetaData()
    meta.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for name, table in meta.tables.items():
            if name == schema.VERSION_TABLE:
                continue
            order = list(table.primary_key.columns) or list(table.columns)
            out[name] = [dict(r._mapping) for r in conn.execute(select(table).order_by(*order))]
    return out


def describe(engine: Engine) -> dict[str, Any]:
    """The schema as the database reports it: columns (type, nullability, default), indexes, unique and foreign
    keys, per table, each list sorted (so the order of constraints inside CREATE TABLE does not count)."""
    inspector = inspect(engine)
    names = [n for n in inspector.get_table_names() if n != schema.VERSION_TABLE]
    columns, pks, indexes, uniques, fks = (
        {key[1]: value for key, value in multi(filter_names=names).items()}
        for multi in (inspector.get_multi_columns, inspector.get_multi_pk_constraint, inspector.get_multi_indexes,
                      inspector.get_multi_unique_constraints, inspector.get_multi_foreign_keys))
    return {name: {
        "columns": sorted((c["name"], str(c["type"]), c["nullable"], str(c.get("default"))) for c in columns[name]),
        "pk": sorted(pks[name]["constrained_columns"]),
        "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in indexes[name]),
        "unique": sorted(tuple(u["column_names"]) for u in uniques[name]),
        "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
                      for f in fks[name]),
    } for name in sorted(names)}


def controller_app(tmp_path: Path, url: str, **settings: Any) -> Any:
    from edgefleet.cloud.settings import ControllerSettings

    config = ControllerSettings(data_dir=tmp_path / "controller", database_url=url, broker_url="mqtt://127.0.0.1:1",
                                admin_token=ADMIN, public_url="http://controller.test", **settings)
    transport = FakeTransport()
    return create_app(config, clock=FakeClock(), transport_factory=lambda url, on_message: transport,
                      reconcile_in_background=False)


def assert_serves_release_data(app: Any, backend: str) -> None:
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN}"
        devices = client.get("/api/v1/devices").json()
        assert {d["id"]: d["tags"] for d in devices} == RELEASE_DEVICES
        deployments = client.get("/api/v1/deployments").json()
        assert [d["note"] for d in deployments] == ["release fixture"]
        summary = client.get("/api/v1/telemetry/summary", params={"group_by": "device"}).json()
        assert summary["rel-1"]["windows"] == 3
        viewer = {"Authorization": f"Bearer {RELEASE_TOKENS[backend]['viewer']}"}
        r = client.get("/api/v1/devices", headers=viewer)   # a token the release issued still signs in
        assert r.status_code == 200 and len(r.json()) == 3


# -- (1) the previous release's database, with data, upgraded ------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_release_database_upgrades_to_head_keeping_every_row(backend, release_database, tmp_path, capsys):
    url = release_database(backend)
    engine = make_engine(url)
    before = rows(engine)
    assert {t: len(r) for t, r in before.items() if r} == {
        "api_tokens": 5, "audit_log": 12, "bundles": 1, "deployment_targets": 2, "deployments": 1, "devices": 3,
        "enrollment_tokens": 4, "processed_messages": 5, "telemetry_windows": 3, "webhooks": 1}
    with engine.connect() as conn:
        status = schema.inspect_schema(conn)
    assert (status.state, status.revision) == (SchemaState.LEGACY_BEHIND, "0001")

    # the controller refuses it, names the command, and changes nothing
    with pytest.raises(DatabaseSchemaError, match="at schema revision 0001 .* needs") as refused:
        controller_app(tmp_path, url)
    assert "edgefleet db upgrade" in str(refused.value) and refused.value.where == make_url(url).render_as_string()
    assert schema.VERSION_TABLE not in inspect(engine).get_table_names() and rows(engine) == before

    out = " ".join(cli_runner(capsys)("db", "upgrade", "--database-url", url).split())
    assert "stamped 0001" in out and f"upgraded from 0001 to {schema.head_revision()} (head)" in out
    after = rows(engine)
    assert set(after) == set(before) | TABLES_SINCE_RELEASE
    assert all(after[table] == [] for table in TABLES_SINCE_RELEASE)
    for table, old_rows in before.items():
        assert len(after[table]) == len(old_rows), table
        for old, new in zip(old_rows, after[table], strict=True):
            assert {k: new[k] for k in old} == old, table
            added = {col: new[col] for (t, col) in ADDED_SINCE_RELEASE if t == table}
            assert added == {col: v for (t, col), v in ADDED_SINCE_RELEASE.items() if t == table}
    with engine.connect() as conn:
        assert schema.inspect_schema(conn).state == SchemaState.CURRENT
    engine.dispose()
    assert_serves_release_data(controller_app(tmp_path, url), backend)


def test_release_database_upgrades_at_start_when_allowed(release_database, tmp_path):
    url = release_database("sqlite")
    app = controller_app(tmp_path, url, database_auto_upgrade=True)
    assert_serves_release_data(app, "sqlite")
    with app.state.controller.engine.connect() as conn:
        assert schema.inspect_schema(conn).revision == schema.head_revision()


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_is_idempotent(backend, release_database, capsys):
    url = release_database(backend)
    run = cli_runner(capsys)
    run("db", "upgrade", "--database-url", url)
    engine = make_engine(url)
    once, schema_once = rows(engine), describe(engine)
    assert "already at" in run("db", "upgrade", "--database-url", url) and "nothing to do" in run(
        "db", "upgrade", "--database-url", url, "--to", schema.head_revision())
    assert rows(engine) == once and describe(engine) == schema_once
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {schema.VERSION_TABLE}")).scalars().all() == [
            schema.head_revision()]
    engine.dispose()


# -- (2) the migrated schema is the declared one --------------------------------------------------------------

@pytest.mark.parametrize("how", ["created", "upgraded from nothing", "upgraded from the release"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_schema_matches_the_tables(backend, how, new_database, release_database):
    """Fails when tables.py changed without a revision: write one with 'edgefleet db revision -m ...'."""
    url = release_database(backend) if how == "upgraded from the release" else new_database(backend)
    engine = make_engine(url)
    if how == "created":
        create_schema(engine)
    else:
        schema.upgrade(engine)
    with engine.connect() as conn:
        assert schema.drift(conn) == []
        assert schema.inspect_schema(conn).state == SchemaState.CURRENT
    engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_created_and_upgraded_databases_are_the_same(backend, new_database, release_database):
    created, upgraded, released = (make_engine(new_database(backend)), make_engine(new_database(backend)),
                                   make_engine(release_database(backend)))
    create_schema(created)
    schema.upgrade(upgraded)
    schema.upgrade(released)
    assert describe(created) == describe(upgraded) == describe(released)
    for engine in (created, upgraded, released):
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_baseline_is_the_release_schema(backend, new_database, release_database):
    baseline, released = make_engine(new_database(backend)), make_engine(release_database(backend))
    schema.upgrade(baseline, to="0001")
    assert describe(baseline) == describe(released)
    assert schema.revision_shapes()[0] == ("0001", {t: frozenset(c[0] for c in d["columns"])
                                                    for t, d in describe(released).items()})
    baseline.dispose()
    released.dispose()


def test_revisions_form_one_line():
    """Two helpers' revisions on the same parent make two heads: merge them (or renumber one)."""
    revisions = schema.history()
    assert [r.down_revision for r in revisions] == [None] + [r.revision for r in revisions[:-1]]
    assert [r.revision for r in revisions if r.is_head] == [schema.head_revision()] == [revisions[-1].revision]
    assert all(re.fullmatch(r"\d{4}", r.revision) and r.title for r in revisions)


# -- what the controller does at start ------------------------------------------------------------------------

def test_startup_table_decides_every_state():
    assert set(STARTUP) == {(state, auto) for state in SchemaState for auto in (False, True)}
    assert set(UPGRADE) == set(SchemaState)
    assert STARTUP[(SchemaState.BEHIND, False)] == SchemaAction.REFUSE
    assert STARTUP[(SchemaState.BEHIND, True)] == SchemaAction.UPGRADE
    assert all(STARTUP[(state, auto)] == SchemaAction.REFUSE
               for state in (SchemaState.FOREIGN, SchemaState.UNKNOWN) for auto in (False, True))


def test_a_new_database_starts_at_head(new_database):
    engine = make_engine(new_database("sqlite"))
    create_schema(engine)
    create_schema(engine)   # the next start: nothing to do
    with engine.connect() as conn:
        status = schema.inspect_schema(conn)
        assert (status.state, status.revision) == (SchemaState.CURRENT, schema.head_revision())
        assert conn.execute(text(f"SELECT count(*) FROM {schema.VERSION_TABLE}")).scalar() == 1
    engine.dispose()


def test_a_database_without_revision_shaped_like_head_is_stamped(new_database):
    """A database a development version made before migrations existed, with head's tables."""
    engine = make_engine(new_database("sqlite"))
    SQLModel.metadata.create_all(engine)
    create_schema(engine)
    with engine.connect() as conn:
        assert schema.inspect_schema(conn).state == SchemaState.CURRENT
    engine.dispose()


def test_dropped_tables_are_made_again(new_database):
    """Tests (and people) drop every table but alembic_version: that is an empty database."""
    engine = make_engine(new_database("sqlite"))
    create_schema(engine)
    SQLModel.metadata.drop_all(engine)
    create_schema(engine)
    with engine.connect() as conn:
        assert schema.inspect_schema(conn).state == SchemaState.CURRENT and schema.drift(conn) == []
    engine.dispose()


def test_a_database_of_unknown_shape_is_refused_untouched(new_database, tmp_path):
    url = new_database("sqlite")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE devices (id VARCHAR(64) PRIMARY KEY, colour VARCHAR)"))
        conn.execute(text("INSERT INTO devices VALUES ('x', 'red')"))
    before = describe(engine)
    refusal = r"match no revision .*devices columns unexpected colour and missing agent_version"
    with pytest.raises(DatabaseSchemaError, match=refusal) as refused:
        controller_app(tmp_path, url, database_auto_upgrade=True)
    assert refused.value.hint and "empty database" in refused.value.hint
    with pytest.raises(DatabaseSchemaError, match="match no revision"):
        schema.upgrade(engine)
    assert describe(engine) == before and rows(engine) == {"devices": [{"id": "x", "colour": "red"}]}
    engine.dispose()


def test_a_database_from_a_newer_release_is_refused(new_database, tmp_path, capsys):
    url = new_database("sqlite")
    engine = make_engine(url)
    create_schema(engine)
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE {schema.VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(DatabaseSchemaError, match="9999, which this release does not know"):
        controller_app(tmp_path, url, database_auto_upgrade=True)
    out = cli_runner(capsys)("db", "upgrade", "--database-url", url, rc=2)
    assert "a newer release made it" in out
    engine.dispose()


# -- the CLI --------------------------------------------------------------------------------------------------

def test_db_current_history_and_bad_targets(release_database, tmp_path, capsys):
    url = release_database("sqlite")
    run = cli_runner(capsys)
    assert "tables match 0001 (behind head" in run("db", "current", "--database-url", url)
    assert "empty" in run("db", "current", "--data-dir", str(tmp_path / "nothing-yet"))
    history = json.loads(run("db", "history", "--json"))
    assert [r["revision"] for r in history][:2] == ["0001", "0002"] and history[-1]["head"] is True
    out = run("db", "upgrade", "--database-url", url, "--to", "nope", rc=2)
    assert "--to: no schema revision 'nope'" in out and "edgefleet db history" in out
    run("db", "upgrade", "--database-url", url, "--to", "0001")
    assert json.loads(run("db", "current", "--database-url", url, "--json"))["revision"] == "0001"
    run("db", "upgrade", "--database-url", url)
    out = run("db", "upgrade", "--database-url", url, "--to", "0001", rc=2)
    assert "past 0001" in out and "downgrades are not supported" in out
    current = json.loads(run("db", "current", "--database-url", url, "--json"))
    assert current["state"] == "current" and current["revision"] == current["head"]


@pytest.fixture
def scratch_migrations(tmp_path, monkeypatch):
    """A copy of the migrations to write revisions into (the package's own stay as they are)."""
    copy = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(schema, "MIGRATIONS_DIR", copy)
    schema.script_directory.cache_clear()
    schema.revision_shapes.cache_clear()
    yield copy
    schema.script_directory.cache_clear()
    schema.revision_shapes.cache_clear()


def test_db_revision_writes_the_next_revision(scratch_migrations, capsys):
    """Without the newest revision in the scripts, tables.py has what head has not: the command writes the
    same changes again, under the same number, after the same parent."""
    *older, newest = sorted((scratch_migrations / "versions").glob("0*.py"))
    removed = newest.read_text()
    newest.unlink()
    number = newest.name[:4]
    out = cli_runner(capsys)("db", "revision", "-m", "again")
    written = scratch_migrations / "versions" / f"{number}_again.py"
    assert str(written) in out.replace("\n", "")
    source = written.read_text()
    parent = older[-1].name[:4]
    assert f"down_revision = '{parent}'" in source or f'down_revision = "{parent}"' in source
    operations = re.compile(r"(create_table\('\w+'|add_column\(sa\.Column\('\w+'|create_index\([^,]+)")
    assert operations.findall(source) == operations.findall(removed) != []
    assert schema.head_revision() == number


def test_db_revision_refuses_a_not_null_column_without_server_default(scratch_migrations, capsys, monkeypatch):
    """It would fail on every table with rows: the command says which column and writes nothing."""
    for path in (scratch_migrations / "versions").glob("0*.py"):
        if not path.name.startswith("0001_"):
            path.unlink()
    monkeypatch.setattr(tables.Device.__table__.c.broker_disable_pending, "server_default", None)
    out = cli_runner(capsys)("db", "revision", "-m", "no default", rc=2)
    assert "without a server default: " in out and "devices.broker_disable_pending" in out and "server_default" in out
    assert sorted(p.name for p in (scratch_migrations / "versions").glob("0*.py")) == ["0001_baseline.py"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_revision_changes_nothing(backend, release_database, scratch_migrations):
    """One transaction from the stamp to the last revision: a failure in the middle leaves the database as the
    release left it (SQLite included, whose driver would otherwise commit before each DDL statement)."""
    head = schema.head_revision()
    broken = f"{int(head) + 1:04d}"
    (scratch_migrations / "versions" / f"{broken}_broken.py").write_text(
        '"""A revision that fails after changing a table."""\n\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f'revision = "{broken}"\ndown_revision = "{head}"\nbranch_labels = None\ndepends_on = None\n\n\n'
        "def upgrade():\n"
        '    with op.batch_alter_table("devices") as batch_op:\n'
        '        batch_op.add_column(sa.Column("extra", sa.Integer(), nullable=True))\n'
        '    op.execute("UPDATE devices SET id = NULL")\n')  # fails where there are rows
    engine = make_engine(release_database(backend))
    before_rows, before_schema = rows(engine), describe(engine)
    with pytest.raises(DatabaseSchemaError, match="upgrade to schema revision head failed, nothing was changed"):
        schema.upgrade(engine)
    assert describe(engine) == before_schema and rows(engine) == before_rows
    assert schema.VERSION_TABLE not in inspect(engine).get_table_names()
    engine.dispose()
