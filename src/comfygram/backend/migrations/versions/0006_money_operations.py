"""money operations: operator refunds of payments, promo codes, referrals, subscriptions,
/paysupport requests, and reconciliation with Telegram's Star transactions

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 18:08:34.009130

Only new tables and new nullable columns: existing rows need no change.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "promo_codes",
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), server_default="0", nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("credits > 0", name=op.f("ck_promo_codes_credits_positive")),
        sa.CheckConstraint(
            "uses >= 0 AND uses <= max_uses", name=op.f("ck_promo_codes_uses_within_max")
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_promo_codes")),
    )
    op.create_table(
        "star_reconciliations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("transactions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("credited", sa.Integer(), server_default="0", nullable=False),
        sa.Column("flagged", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.String(length=300), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_star_reconciliations")),
    )
    op.create_table(
        "promo_redemptions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["code"], ["promo_codes.code"], name=op.f("fk_promo_redemptions_code_promo_codes")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_promo_redemptions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_promo_redemptions")),
        sa.UniqueConstraint("code", "user_id", name="uq_promo_redemptions_code_user"),
    )
    with op.batch_alter_table("promo_redemptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_promo_redemptions_code"), ["code"], unique=False)
        batch_op.create_index(batch_op.f("ix_promo_redemptions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("plan", sa.String(length=32), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("payload", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("first_charge_id", sa.String(length=200), nullable=True),
        sa.Column("current_period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_subscriptions_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
        sa.UniqueConstraint("first_charge_id", name=op.f("uq_subscriptions_first_charge_id")),
        sa.UniqueConstraint("payload", name=op.f("uq_subscriptions_payload")),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscriptions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "star_discrepancies",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("telegram_payment_charge_id", sa.String(length=200), nullable=False),
        sa.Column("payment_id", sa.String(length=36), nullable=True),
        sa.Column("detail", sa.String(length=500), nullable=False),
        sa.Column("found_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["found_by"],
            ["star_reconciliations.id"],
            name=op.f("fk_star_discrepancies_found_by_star_reconciliations"),
        ),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_star_discrepancies_payment_id_payments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_star_discrepancies")),
        sa.UniqueConstraint(
            "kind", "telegram_payment_charge_id", name="uq_star_discrepancies_kind"
        ),
    )
    op.create_table(
        "support_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("payment_id", sa.String(length=36), nullable=True),
        sa.Column("chat_id", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("answered_by", sa.String(length=64), nullable=True),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["payment_id"], ["payments.id"], name=op.f("fk_support_requests_payment_id_payments")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_support_requests_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_support_requests")),
    )
    with op.batch_alter_table("support_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_support_requests_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_support_requests_user_id"), ["user_id"], unique=False)

    # Plain ADD COLUMN and indexes, never a batch copy: SQLite cannot drop and rebuild users or
    # payments while rows of other tables point at them.
    for column in (
        sa.Column("refund_claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refund_actor", sa.String(length=64), nullable=True),
        sa.Column("refund_reason", sa.String(length=500), nullable=True),
        sa.Column("subscription_id", sa.String(length=36), nullable=True),
    ):
        op.add_column("payments", column)
    op.create_index(op.f("ix_payments_subscription_id"), "payments", ["subscription_id"])
    op.add_column("users", sa.Column("referred_by_id", sa.Integer(), nullable=True))
    op.add_column("users", sa.Column("invite_code", sa.String(length=16), nullable=True))
    op.create_index(op.f("ix_users_referred_by_id"), "users", ["referred_by_id"])
    op.create_index(op.f("ix_users_invite_code"), "users", ["invite_code"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_users_invite_code"), table_name="users")
    op.drop_index(op.f("ix_users_referred_by_id"), table_name="users")
    op.drop_column("users", "invite_code")
    op.drop_column("users", "referred_by_id")
    op.drop_index(op.f("ix_payments_subscription_id"), table_name="payments")
    for column in ("subscription_id", "refund_reason", "refund_actor", "refund_claimed_at"):
        op.drop_column("payments", column)
    op.drop_table("support_requests")
    op.drop_table("star_discrepancies")
    op.drop_table("subscriptions")
    op.drop_table("promo_redemptions")
    op.drop_table("star_reconciliations")
    op.drop_table("promo_codes")
