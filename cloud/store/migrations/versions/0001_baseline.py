"""Baseline: the schema of the last release without migrations (commit 768c803), as its ``create_all`` made it.

A database made by that release (no ``alembic_version`` table) is stamped with this revision when the
controller or ``edgefleet db upgrade`` first meets it (docs/operations.md, "Upgrading").

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('role', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_api_tokens_device_id'), 'api_tokens', ['device_id'], unique=False)
    op.create_index(op.f('ix_api_tokens_token_hash'), 'api_tokens', ['token_hash'], unique=True)
    op.create_table('audit_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('action', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('target', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_audit_log_action'), 'audit_log', ['action'], unique=False)
    op.create_index(op.f('ix_audit_log_at'), 'audit_log', ['at'], unique=False)
    op.create_table('capture_uploads',
    sa.Column('upload_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('labelled', sa.Integer(), nullable=False),
    sa.Column('t_from', sa.Float(), nullable=False),
    sa.Column('t_to', sa.Float(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('grant_due', sa.Boolean(), nullable=False),
    sa.Column('requested_at', sa.Float(), nullable=False),
    sa.Column('granted_at', sa.Float(), nullable=True),
    sa.Column('dataset_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('upload_id')
    )
    op.create_index(op.f('ix_capture_uploads_device_id'), 'capture_uploads', ['device_id'], unique=False)
    op.create_table('captured_datasets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('upload_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('bundle_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('t_from', sa.Float(), nullable=False),
    sa.Column('t_to', sa.Float(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('labelled', sa.Integer(), nullable=False),
    sa.Column('blob_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('stored_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('upload_id')
    )
    op.create_index(op.f('ix_captured_datasets_bundle_digest'), 'captured_datasets', ['bundle_digest'], unique=False)
    op.create_index(op.f('ix_captured_datasets_device_id'), 'captured_datasets', ['device_id'], unique=False)
    op.create_index(op.f('ix_captured_datasets_model_name'), 'captured_datasets', ['model_name'], unique=False)
    op.create_index(op.f('ix_captured_datasets_t_to'), 'captured_datasets', ['t_to'], unique=False)
    op.create_table('delegations',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('document', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('pushed_at', sa.Float(), nullable=False),
    sa.Column('pushed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('version')
    )
    op.create_table('device_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('msg_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('level', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('text', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('sent_at', sa.Float(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'msg_id')
    )
    op.create_index(op.f('ix_device_events_device_id'), 'device_events', ['device_id'], unique=False)
    op.create_table('devices',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('mqtt_password_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('message_key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('hardware_class', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('arch', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('os', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('runtimes', sa.JSON(), nullable=False),
    sa.Column('agent_version', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('installed', sa.JSON(), nullable=True),
    sa.Column('update_state', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('free_disk_bytes', sa.BigInteger(), nullable=True),
    sa.Column('online', sa.Boolean(), nullable=False),
    sa.Column('last_seen', sa.Float(), nullable=True),
    sa.Column('heartbeat_interval_s', sa.Float(), nullable=True),
    sa.Column('last_sequence', sa.BigInteger(), nullable=False),
    sa.Column('root_version', sa.Integer(), nullable=True),
    sa.Column('enrolled_at', sa.Float(), nullable=False),
    sa.Column('enrolled_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('enrollment_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('tags', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('used_at', sa.Float(), nullable=True),
    sa.Column('used_by_device', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_enrollment_tokens_token_hash'), 'enrollment_tokens', ['token_hash'], unique=True)
    op.create_table('incident_cohorts',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
    sa.Column('incident_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('state', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_incident_cohorts_incident_id'), 'incident_cohorts', ['incident_id'], unique=False)
    op.create_table('incident_cursor',
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    sa.Column('last_id', sa.BigInteger(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('incidents',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('cohort_kind', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
    sa.Column('cohort_key', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('bundle_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('opened_at', sa.Float(), nullable=False),
    sa.Column('first_alarm_at', sa.Float(), nullable=False),
    sa.Column('last_alarm_at', sa.Float(), nullable=False),
    sa.Column('last_window_end', sa.Float(), nullable=False),
    sa.Column('closed_at', sa.Float(), nullable=True),
    sa.Column('windows', sa.Integer(), nullable=False),
    sa.Column('peak_psi', sa.Float(), nullable=True),
    sa.Column('devices', sa.JSON(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_incidents_bundle_digest'), 'incidents', ['bundle_digest'], unique=False)
    op.create_index(op.f('ix_incidents_cohort_key'), 'incidents', ['cohort_key'], unique=False)
    op.create_index('ix_incidents_state_opened', 'incidents', ['state', 'opened_at'], unique=False)
    op.create_table('models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_models_name'), 'models', ['name'], unique=True)
    op.create_table('processed_messages',
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('msg_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'msg_id')
    )
    op.create_index(op.f('ix_processed_messages_received_at'), 'processed_messages', ['received_at'], unique=False)
    op.create_table('release_keys',
    sa.Column('key_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('pem', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('added_at', sa.Float(), nullable=False),
    sa.Column('added_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('key_id')
    )
    op.create_table('telemetry_windows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('msg_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('bundle_name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('bundle_version', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('window_seq', sa.BigInteger(), nullable=False),
    sa.Column('window_start', sa.Float(), nullable=False),
    sa.Column('window_end', sa.Float(), nullable=False),
    sa.Column('requests', sa.Integer(), nullable=False),
    sa.Column('batches', sa.Integer(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('errors', sa.Integer(), nullable=False),
    sa.Column('latency_bounds', sa.JSON(), nullable=False),
    sa.Column('latency_counts', sa.JSON(), nullable=False),
    sa.Column('predictions', sa.JSON(), nullable=False),
    sa.Column('drift_psi', sa.Float(), nullable=True),
    sa.Column('drift_js', sa.Float(), nullable=True),
    sa.Column('drift_ks', sa.Float(), nullable=True),
    sa.Column('drift_level', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('drift_samples', sa.Integer(), nullable=True),
    sa.Column('labelled', sa.Integer(), nullable=False),
    sa.Column('correct', sa.Integer(), nullable=False),
    sa.Column('confusion', sa.JSON(), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.Column('received_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('device_id', 'msg_id')
    )
    op.create_index('ix_telemetry_device_end', 'telemetry_windows', ['device_id', 'window_end'], unique=False)
    op.create_index(op.f('ix_telemetry_windows_bundle_digest'), 'telemetry_windows', ['bundle_digest'], unique=False)
    op.create_index(op.f('ix_telemetry_windows_device_id'), 'telemetry_windows', ['device_id'], unique=False)
    op.create_table('trust_roots',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('document', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('pushed_at', sa.Float(), nullable=False),
    sa.Column('pushed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('version')
    )
    op.create_table('webhooks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('url', sqlmodel.sql.sqltypes.AutoString(length=2048), nullable=False),
    sa.Column('events', sa.JSON(), nullable=False),
    sa.Column('secret', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('description', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('model_datasets',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('labelled', sa.Boolean(), nullable=False),
    sa.Column('uploaded_at', sa.Float(), nullable=False),
    sa.Column('uploaded_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('model_id')
    )
    op.create_table('model_recipes',
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('recipe', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('updated_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.PrimaryKeyConstraint('model_id')
    )
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('parent_id', sa.Integer(), nullable=True),
    sa.Column('format', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('artifact_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('artifact_size', sa.BigInteger(), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('lineage', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.ForeignKeyConstraint(['parent_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('model_id', 'version')
    )
    op.create_index(op.f('ix_model_versions_artifact_digest'), 'model_versions', ['artifact_digest'], unique=False)
    op.create_index(op.f('ix_model_versions_model_id'), 'model_versions', ['model_id'], unique=False)
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('webhook_id', sa.Integer(), nullable=False),
    sa.Column('event', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.Float(), nullable=False),
    sa.Column('in_flight_until', sa.Float(), nullable=True),
    sa.Column('last_status', sa.Integer(), nullable=True),
    sa.Column('last_error', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('delivered_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['webhook_id'], ['webhooks.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['state', 'next_attempt_at'], unique=False)
    op.create_index(op.f('ix_webhook_deliveries_webhook_id'), 'webhook_deliveries', ['webhook_id'], unique=False)
    op.create_table('bundles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('build', sa.BigInteger(), nullable=False),
    sa.Column('runtime', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('model_version_id', sa.Integer(), nullable=True),
    sa.Column('uploaded_at', sa.Float(), nullable=False),
    sa.Column('uploaded_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'build')
    )
    op.create_index(op.f('ix_bundles_digest'), 'bundles', ['digest'], unique=True)
    op.create_index(op.f('ix_bundles_model_version_id'), 'bundles', ['model_version_id'], unique=False)
    op.create_index(op.f('ix_bundles_name'), 'bundles', ['name'], unique=False)
    op.create_table('compression_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('source_version_id', sa.Integer(), nullable=False),
    sa.Column('source_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('variant', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('runtime', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('data', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error_code', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('error_message', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('result_version_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['result_version_id'], ['model_versions.id'], ),
    sa.ForeignKeyConstraint(['source_version_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_compression_jobs_model_name'), 'compression_jobs', ['model_name'], unique=False)
    op.create_index(op.f('ix_compression_jobs_source_version_id'), 'compression_jobs', ['source_version_id'],
                    unique=False)
    op.create_index('ix_compression_jobs_state', 'compression_jobs', ['state', 'id'], unique=False)
    op.create_table('deployments',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_id', sa.Integer(), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('selector', sa.JSON(), nullable=False),
    sa.Column('skipped', sa.JSON(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('timeout_s', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['bundle_id'], ['bundles.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_deployments_bundle_id'), 'deployments', ['bundle_id'], unique=False)
    op.create_table('retraining_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('model_name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('parent_version_id', sa.Integer(), nullable=False),
    sa.Column('parent_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('incident_id', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('phase', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('datasets', sa.JSON(), nullable=False),
    sa.Column('result_version_id', sa.Integer(), nullable=True),
    sa.Column('result_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('compression_job_id', sa.Integer(), nullable=True),
    sa.Column('compressed_version', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('timings', sa.JSON(), nullable=False),
    sa.Column('error_code', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('error_message', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('log_tail', sa.Text(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.ForeignKeyConstraint(['compression_job_id'], ['compression_jobs.id'], ),
    sa.ForeignKeyConstraint(['parent_version_id'], ['model_versions.id'], ),
    sa.ForeignKeyConstraint(['result_version_id'], ['model_versions.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_retraining_jobs_incident', 'retraining_jobs', ['model_name', 'incident_id'], unique=False)
    op.create_index(op.f('ix_retraining_jobs_model_name'), 'retraining_jobs', ['model_name'], unique=False)
    op.create_index('ix_retraining_jobs_state', 'retraining_jobs', ['state', 'id'], unique=False)
    op.create_table('deployment_targets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('deployment_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('sequence', sa.BigInteger(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.Column('outcome', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('detail', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('bytes_done', sa.BigInteger(), nullable=True),
    sa.Column('bytes_total', sa.BigInteger(), nullable=True),
    sa.Column('order', sa.JSON(), nullable=False),
    sa.Column('published_at', sa.Float(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], ),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('deployment_id', 'device_id')
    )
    op.create_index(op.f('ix_deployment_targets_deployment_id'), 'deployment_targets', ['deployment_id'], unique=False)
    op.create_index(op.f('ix_deployment_targets_device_id'), 'deployment_targets', ['device_id'], unique=False)
    op.create_index('ix_targets_open', 'deployment_targets', ['final', 'device_id'], unique=False)
    op.create_table('rollouts',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_id', sa.Integer(), nullable=False),
    sa.Column('bundle_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('deployment_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('selector', sa.JSON(), nullable=False),
    sa.Column('policy', sa.JSON(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('stage_index', sa.Integer(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('note', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('protected_tags', sa.JSON(), nullable=False),
    sa.Column('ordered', sa.Integer(), nullable=False),
    sa.Column('succeeded', sa.Integer(), nullable=False),
    sa.Column('rollback', sa.JSON(), nullable=False),
    sa.Column('incidents', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('approved_at', sa.Float(), nullable=True),
    sa.Column('approved_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('aborted_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['bundle_id'], ['bundles.id'], ),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_rollouts_bundle_id'), 'rollouts', ['bundle_id'], unique=False)
    op.create_index('ix_rollouts_state', 'rollouts', ['state'], unique=False)
    op.create_table('experiments',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
    sa.Column('bundle_a_id', sa.Integer(), nullable=False),
    sa.Column('bundle_a_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('bundle_b_id', sa.Integer(), nullable=False),
    sa.Column('bundle_b_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('deployment_a_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('deployment_b_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('selector', sa.JSON(), nullable=False),
    sa.Column('split_percent', sa.Float(), nullable=False),
    sa.Column('cohort_size', sa.Integer(), nullable=True),
    sa.Column('duration_s', sa.Float(), nullable=False),
    sa.Column('alpha', sa.Float(), nullable=False),
    sa.Column('min_windows', sa.Integer(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('promoted_arm', sqlmodel.sql.sqltypes.AutoString(length=1), nullable=True),
    sa.Column('rollout_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=False),
    sa.Column('ends_at', sa.Float(), nullable=False),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['bundle_a_id'], ['bundles.id'], ),
    sa.ForeignKeyConstraint(['bundle_b_id'], ['bundles.id'], ),
    sa.ForeignKeyConstraint(['deployment_a_id'], ['deployments.id'], ),
    sa.ForeignKeyConstraint(['deployment_b_id'], ['deployments.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_experiments_bundle_a_id'), 'experiments', ['bundle_a_id'], unique=False)
    op.create_index(op.f('ix_experiments_bundle_b_id'), 'experiments', ['bundle_b_id'], unique=False)
    op.create_index('ix_experiments_state', 'experiments', ['state'], unique=False)
    op.create_table('rollout_devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('stage_index', sa.Integer(), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('previous_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('revert_deployment_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('retry_at', sa.Float(), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('ordered_at', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'device_id')
    )
    op.create_index(op.f('ix_rollout_devices_device_id'), 'rollout_devices', ['device_id'], unique=False)
    op.create_index('ix_rollout_devices_state', 'rollout_devices', ['rollout_id', 'state'], unique=False)
    op.create_table('rollout_stages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('rollout_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('executed_at', sa.Float(), nullable=True),
    sa.Column('soak_until', sa.Float(), nullable=True),
    sa.Column('finished_at', sa.Float(), nullable=True),
    sa.Column('verdicts', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('rollout_id', 'index')
    )
    op.create_index(op.f('ix_rollout_stages_rollout_id'), 'rollout_stages', ['rollout_id'], unique=False)
    op.create_table('experiment_devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('experiment_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('device_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
    sa.Column('arm', sqlmodel.sql.sqltypes.AutoString(length=1), nullable=True),
    sa.Column('state', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('previous_digest', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('ordered_at', sa.Float(), nullable=True),
    sa.Column('running_since', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], ),
    sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('experiment_id', 'device_id')
    )
    op.create_index(op.f('ix_experiment_devices_device_id'), 'experiment_devices', ['device_id'], unique=False)
    op.create_index(op.f('ix_experiment_devices_experiment_id'), 'experiment_devices', ['experiment_id'], unique=False)


def downgrade() -> None:
    """Not supported: restore the backup taken before the upgrade (docs/operations.md)."""
    raise NotImplementedError("downgrades are not supported: restore the backup taken before upgrading")
