"""admin panel: users.banned, operator price and switch of presets

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 08:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("banned", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("presets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("operator_price", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("operator_enabled", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("presets", schema=None) as batch_op:
        batch_op.drop_column("operator_enabled")
        batch_op.drop_column("operator_price")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("banned")
