"""leases: which controller runs each background loop when several share the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("leases",
                    sa.Column("name", sa.String(length=64), nullable=False),
                    sa.Column("holder", sa.String(length=128), nullable=False),
                    sa.Column("expires_at", sa.Float(), nullable=False),
                    sa.Column("acquired_at", sa.Float(), nullable=False),
                    sa.Column("generation", sa.BigInteger(), nullable=False),
                    sa.PrimaryKeyConstraint("name"))


def downgrade() -> None:
    """Not supported: restore the backup taken before the upgrade (docs/operations.md)."""
    raise NotImplementedError("downgrades are not supported: restore the backup taken before upgrading")
