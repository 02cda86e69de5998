"""broker accounts on the dynamic security plugin: keys keep a sealed copy; one key per application is its login

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 19:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch_op:
        # Sealed with ORCH_SECRET_KEY: the broker's account of a key can be made again after the broker lost it.
        batch_op.add_column(sa.Column("key_sealed", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("application_login", sa.Boolean(), nullable=False, server_default=sa.false()))
    # One login key per application, whatever requests race.
    op.create_index(
        "one_login_key_per_application",
        "api_keys",
        ["application_id"],
        unique=True,
        sqlite_where=sa.text("application_login"),
        postgresql_where=sa.text("application_login"),
    )


def downgrade() -> None:
    op.drop_index("one_login_key_per_application", "api_keys")
    with op.batch_alter_table("api_keys") as batch_op:
        batch_op.drop_column("application_login")
        batch_op.drop_column("key_sealed")
