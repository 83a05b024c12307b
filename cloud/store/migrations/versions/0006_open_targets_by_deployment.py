"""open targets by deployment: an index on deployment_targets (deployment_id, final), so a deployment's
roll-up counts its open targets without reading its final ones (services/deployments.py ``_rollup``, once
per deployment and batch of status reports).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deployment_targets', schema=None) as batch_op:
        batch_op.create_index('ix_targets_deployment_open', ['deployment_id', 'final'], unique=False)


def downgrade() -> None:
    """Not supported: restore the backup taken before the upgrade (docs/operations.md)."""
    raise NotImplementedError("downgrades are not supported: restore the backup taken before upgrading")
