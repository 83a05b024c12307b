"""devices.broker_disable_pending: a decommissioned device whose broker client is still to be disabled.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch_op:
        batch_op.add_column(sa.Column("broker_disable_pending", sa.Boolean(), nullable=False,
                                      server_default="0"))


def downgrade() -> None:
    """Not supported: restore the backup taken before the upgrade (docs/operations.md)."""
    raise NotImplementedError("downgrades are not supported: restore the backup taken before upgrading")
