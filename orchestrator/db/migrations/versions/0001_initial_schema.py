"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 18:21:32.045171
"""

import sqlalchemy as sa
from alembic import op

import orchestrator.db.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "integration_activity",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("integration_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("integration_activity", schema=None) as batch_op:
        batch_op.create_index("ix_activity_integration", ["application_id", "integration_id", "id"], unique=False)

    op.create_table(
        "integration_stats",
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("integration_id", sa.String(length=36), nullable=False),
        sa.Column("minute", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("retried", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("application_id", "integration_id", "minute"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.String(length=128), nullable=False),
        sa.Column("mqtt_password_hash", sa.String(length=256), nullable=False),
        sa.Column("integration_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["application_id"], ["applications.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_application_id"), ["application_id"], unique=False)

    op.create_table(
        "devices",
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("dev_eui", sa.String(length=16), nullable=True),
        sa.Column("join_eui", sa.String(length=16), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("updated_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["application_id"], ["applications.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("application_id", "device_id"),
    )
    op.create_table(
        "downlinks",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("queued_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("sent_at", orchestrator.db.models.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["application_id"], ["applications.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("downlinks", schema=None) as batch_op:
        batch_op.create_index("ix_downlinks_device_state", ["application_id", "device_id", "state"], unique=False)

    op.create_table(
        "integrations",
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("template_id", sa.String(length=36), nullable=False),
        sa.Column("template_version", sa.String(length=40), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("secrets_encrypted", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("key_encrypted", sa.Text(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("actual_state", sa.String(length=16), nullable=False),
        sa.Column("state_since", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", orchestrator.db.models.UtcDateTime(), nullable=True),
        sa.Column("restart_count", sa.Integer(), nullable=False),
        sa.Column("runtime", sa.String(length=20), nullable=True),
        sa.Column("runtime_handle", sa.JSON(), nullable=True),
        sa.Column("config_hash", sa.String(length=64), nullable=True),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("retried", sa.Integer(), nullable=False),
        sa.Column("last_delivery_at", orchestrator.db.models.UtcDateTime(), nullable=True),
        sa.Column("created_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("updated_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["application_id"], ["applications.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("application_id", "id"),
    )


def downgrade() -> None:
    op.drop_table("integrations")
    with op.batch_alter_table("downlinks", schema=None) as batch_op:
        batch_op.drop_index("ix_downlinks_device_state")

    op.drop_table("downlinks")
    op.drop_table("devices")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_application_id"))

    op.drop_table("api_keys")
    op.drop_table("integration_stats")
    with op.batch_alter_table("integration_activity", schema=None) as batch_op:
        batch_op.drop_index("ix_activity_integration")

    op.drop_table("integration_activity")
    op.drop_table("applications")
