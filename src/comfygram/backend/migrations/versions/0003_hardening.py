"""hardening: 64-bit balances, payment refunds and pre-checkout, media retention, ComfyUI crashes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 19:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("balance", type_=sa.BigInteger(), existing_type=sa.Integer())
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.alter_column("amount", type_=sa.BigInteger(), existing_type=sa.Integer())
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("precheckout_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("refunded_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("media_deleted_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("comfyui_crashes", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("comfyui_crashes")
        batch_op.drop_column("media_deleted_at")
    with op.batch_alter_table("payments", schema=None) as batch_op:
        batch_op.drop_column("refunded_at")
        batch_op.drop_column("precheckout_at")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.alter_column("amount", type_=sa.Integer(), existing_type=sa.BigInteger())
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.alter_column("balance", type_=sa.Integer(), existing_type=sa.BigInteger())
