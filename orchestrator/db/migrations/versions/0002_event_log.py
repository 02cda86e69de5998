"""the durable event log, and duplicates dropped by workers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 17:00:00
"""

import sqlalchemy as sa
from alembic import op

import orchestrator.db.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

LogId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("integrations") as batch_op:
        batch_op.add_column(sa.Column("duplicates", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "events",
        sa.Column("id", LogId, autoincrement=True, nullable=False),
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=True),
        sa.Column("integration_id", sa.String(length=36), nullable=True),
        sa.Column("time", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=True),
        sa.Column("data", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_events_application", "events", ["application_id", "id"])
    op.create_index("ix_events_device", "events", ["application_id", "device_id", "id"])
    op.create_index("ix_events_time", "events", ["application_id", "time"])
    op.create_table(
        "event_retention",
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("pruned_through", LogId, nullable=False),
        sa.PrimaryKeyConstraint("application_id"),
    )


def downgrade() -> None:
    op.drop_table("event_retention")
    op.drop_index("ix_events_time", table_name="events")
    op.drop_index("ix_events_device", table_name="events")
    op.drop_index("ix_events_application", table_name="events")
    op.drop_table("events")
    with op.batch_alter_table("integrations") as batch_op:
        batch_op.drop_column("duplicates")
