"""the cluster: a lease for the one leader, and the instances that run

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 20:20:00
"""

import sqlalchemy as sa
from alembic import op

import orchestrator.db.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=True),
        sa.Column("acquired_at", orchestrator.db.models.UtcDateTime(), nullable=True),
        sa.Column("renewed_at", orchestrator.db.models.UtcDateTime(), nullable=True),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("transitions", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The row exists from the start: instances then only ever update it, under a row lock (two first
    # starts inserting it at once would collide).
    op.execute("INSERT INTO leases (name, duration_seconds, transitions) VALUES ('reconciler', 10, 0)")
    op.create_table(
        "instances",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("api_url", sa.String(length=500), nullable=False),
        sa.Column("started_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("seen_at", orchestrator.db.models.UtcDateTime(), nullable=False),
        sa.Column("templates_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("secret_fingerprint", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("instances")
    op.drop_table("leases")
