"""Alembic's environment for the controller's schema, run by :mod:`edgefleet.cloud.store.migrations.schema`.

There is no ``alembic.ini``: the caller hands over an open connection (``config.attributes["connection"]``),
and the target is ``SQLModel.metadata`` with every table of :mod:`edgefleet.cloud.store.tables`. SQLite
gets batch mode (``render_as_batch``), so a revision's ``op.batch_alter_table`` works on both databases.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from edgefleet.cloud.store.migrations.schema import migration_options

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("the controller's migrations run on a connection given by "
                       "edgefleet.cloud.store.migrations.schema (no alembic.ini, no offline mode)")
context.configure(connection=connection, **migration_options(connection))
with context.begin_transaction():
    context.run_migrations()
