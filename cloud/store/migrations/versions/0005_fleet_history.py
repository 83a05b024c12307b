"""fleet history: devices' online/offline transitions and periodic fleet snapshots, for the UI's trends
(services/fleet_history.py).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('device_transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('cause', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('device_transitions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_device_transitions_at'), ['at'], unique=False)
        batch_op.create_index('ix_device_transitions_device_at', ['device_id', 'at'], unique=False)

    op.create_table('fleet_snapshots',
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('metric', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('value', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('at', 'metric', 'key')
    )


def downgrade() -> None:
    """Not supported: restore the backup taken before the upgrade (docs/operations.md)."""
    raise NotImplementedError("downgrades are not supported: restore the backup taken before upgrading")
