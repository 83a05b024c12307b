"""``edgefleet db``: the controller's database schema (Alembic revisions, docs/operations.md "Upgrading").

These commands work on the configured database itself (``database_url`` or the SQLite file in ``data_dir``,
from the same ``EDGEFLEET_*`` environment and config file as ``edgefleet serve``), not over HTTP. Back the
database up before ``upgrade``: there are no downgrades.
"""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cloud.cli.output import console, print_json, print_table

db_app = typer.Typer(no_args_is_help=True, help="The controller's database schema: upgrade, current, history.")

DATA_DIR = typer.Option(None, "--data-dir", help="data directory (default from settings: .edgefleet/controller)")
DATABASE_URL = typer.Option(None, "--database-url", help="SQLAlchemy URL (default from settings: SQLite in the "
                                                         "data directory)")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


def _engine(data_dir: str | None, database_url: str | None) -> Any:
    from edgefleet.cloud.settings import ControllerSettings
    from edgefleet.cloud.store.engine import make_engine

    overrides: dict[str, Any] = {k: v for k, v in {"data_dir": data_dir, "database_url": database_url}.items()
                                 if v is not None}
    return make_engine(ControllerSettings(**overrides).resolved_database_url)


def _describe(status: Any) -> str:
    from edgefleet.cloud.store.migrations.schema import SchemaState

    return {
        SchemaState.EMPTY: "empty (no EdgeFleet tables)",
        SchemaState.CURRENT: f"{status.revision} (head)",
        SchemaState.BEHIND: f"{status.revision} (behind head {status.head}: run 'edgefleet db upgrade')",
        SchemaState.LEGACY_CURRENT: f"none recorded; tables match {status.revision} (head): stamped at next start",
        SchemaState.LEGACY_BEHIND: f"none recorded; tables match {status.revision} (behind head {status.head}: "
                                   "run 'edgefleet db upgrade')",
        SchemaState.FOREIGN: "none recorded; the tables match no revision of this release",
        SchemaState.UNKNOWN: f"{status.revision} (unknown to this release, whose head is {status.head})",
    }[status.state]


@db_app.command("upgrade")
def upgrade(
    to: str = typer.Option("head", "--to", help="revision to upgrade to (see 'edgefleet db history')"),
    data_dir: str = DATA_DIR,
    database_url: str = DATABASE_URL,
) -> None:
    """Upgrade the database to the newest schema revision (or --to REV). A database made before schema
    migrations is recognised and stamped first. Idempotent; back the database up first."""
    from edgefleet.cloud.store.migrations import schema

    engine = _engine(data_dir, database_url)
    try:
        before, after = schema.upgrade(engine, to=to)
    finally:
        engine.dispose()
    where = engine.url.render_as_string(hide_password=True)
    head = " (head)" if after.state == schema.SchemaState.CURRENT else ""
    legacy = before.state in (schema.SchemaState.LEGACY_CURRENT, schema.SchemaState.LEGACY_BEHIND)
    done = f"stamped {before.revision} (its tables were made before schema migrations), " if legacy else ""
    if before.revision == after.revision:
        console.print(f"{where}: {done}already at {after.revision}{head}, nothing to do", highlight=False,
                      soft_wrap=True)
    else:
        console.print(f"{where}: {done}upgraded from {before.revision or 'nothing'} to {after.revision}{head}",
                      highlight=False)


@db_app.command("current")
def current(
    data_dir: str = DATA_DIR,
    database_url: str = DATABASE_URL,
    json_: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show the database's schema revision and whether it is the newest this release knows (reads only)."""
    from edgefleet.cloud.store.migrations import schema

    engine = _engine(data_dir, database_url)
    try:
        with engine.connect() as conn:
            status = schema.inspect_schema(conn)
    finally:
        engine.dispose()
    if json_:
        print_json({"state": status.state, "revision": status.revision, "head": status.head,
                    "differences": list(status.differences)})
        return
    console.print(f"{engine.url.render_as_string(hide_password=True)}: {_describe(status)}", highlight=False,
                  soft_wrap=True)
    for line in status.differences:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


@db_app.command("history")
def history(json_: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the schema revisions of this release, oldest first."""
    from edgefleet.cloud.store.migrations import schema

    revisions = schema.history()
    if json_:
        print_json([{"revision": r.revision, "down_revision": r.down_revision, "title": r.title, "head": r.is_head}
                    for r in revisions])
        return
    print_table(None, ["revision", "after", "head", "change"],
                [(r.revision, r.down_revision or "-", "yes" if r.is_head else "", r.title) for r in revisions])


@db_app.command("revision")
def revision(message: str = typer.Option(..., "-m", "--message", help="what the revision changes")) -> None:
    """For developers: write a new revision for what cloud/store/tables.py has and the newest revision has not
    (Alembic autogenerate against a scratch SQLite database). Review the file before committing it."""
    from edgefleet.cloud.store.migrations import schema

    path = schema.new_revision(message)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)
