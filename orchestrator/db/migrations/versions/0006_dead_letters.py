"""dead letters: messages that failed for good, kept in full; a counter of them, and a delivery latency
histogram, per integration

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 13:00:00
"""

import sqlalchemy as sa
from alembic import op

import orchestrator.db.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("application_id", sa.String(length=36), nullable=False),
        sa.Column("integration_id", sa.String(length=36), nullable=False),
        sa.Column("at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=36), nullable=False),
        sa.Column("topic", sa.String(length=500), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("encoding", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_integration", "dead_letters", ["application_id", "integration_id", "id"])
    op.add_column("integrations", sa.Column("dead_lettered", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("integrations", sa.Column("delivery_latency", sa.JSON(), nullable=False, server_default="{}"))


def downgrade() -> None:
    op.drop_column("integrations", "delivery_latency")
    op.drop_column("integrations", "dead_lettered")
    op.drop_index("ix_dead_letters_integration", table_name="dead_letters")
    op.drop_table("dead_letters")
