"""succession: which instance logged each event, how far each instance published, the cluster's own id

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 21:20:00
"""

import secrets

import sqlalchemy as sa
from alembic import op

import orchestrator.db.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("instance_id", sa.String(length=64), nullable=True))
    op.create_index("ix_events_instance", "events", ["instance_id", "id"])
    op.add_column(
        "instances",
        sa.Column("published_through", orchestrator.db.models.LogId, nullable=False, server_default="0"),
    )
    op.create_table(
        "clusters",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Made once with the database: the runtimes label workers with it, so every instance on this database
    # finds the same workers, and orchestrators on other databases never touch them.
    op.execute(f"INSERT INTO clusters (id) VALUES ('{secrets.token_hex(4)}')")


def downgrade() -> None:
    op.drop_table("clusters")
    op.drop_column("instances", "published_through")
    op.drop_index("ix_events_instance", table_name="events")
    op.drop_column("events", "instance_id")
