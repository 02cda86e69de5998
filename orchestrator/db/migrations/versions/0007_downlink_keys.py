"""downlink keys: an integration whose template asks for one gets a key that its target platform uses to push
downlinks back (The Things Stack's X-Downlink-Apikey)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 14:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("integrations", sa.Column("downlink_key_id", sa.String(length=40), nullable=True))
    op.add_column("integrations", sa.Column("downlink_key_encrypted", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("integrations", "downlink_key_encrypted")
    op.drop_column("integrations", "downlink_key_id")
