"""job files: a job's inputs and outputs as rows (several photos in, several files out), its options

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 08:00:00.000000

Existing jobs stay readable: their one input and (if any) one result become job_files rows at
position 0 pointing at the same files, before jobs.input_path/mime and result_path/mime go.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _job_files(name: str, *, foreign_key: bool) -> None:
    constraints: list[sa.Constraint] = [
        sa.CheckConstraint("role IN ('input', 'output')", name=op.f(f"ck_{name}_role")),
        sa.CheckConstraint("kind IN ('image', 'animation', 'video')", name=op.f(f"ck_{name}_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("job_id", "role", "position", name=f"uq_{name}_job_role_position"),
    ]
    if foreign_key:
        constraints.append(
            sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f(f"fk_{name}_job_id_jobs"))
        )
    op.create_table(
        name,
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=8), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("slot", sa.String(length=16), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("mime", sa.String(length=32), nullable=False),
        sa.Column("path", sa.String(length=300), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("frames", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *constraints,
    )


_COLUMNS = "job_id, role, position, slot, kind, mime, path, frames, created_at"


def upgrade() -> None:
    # SQLite rebuilds `jobs` to drop its columns, which a table referring to it (with rows)
    # would forbid: the rows are gathered in a plain table first and moved over at the end.
    _job_files("job_files_0005", foreign_key=False)
    # Every old job had one still photo in (slot "photo") and at most one still image out.
    op.execute(
        f"INSERT INTO job_files_0005 ({_COLUMNS})"
        " SELECT id, 'input', 0, 'photo', 'image', input_mime, input_path, 1, created_at"
        " FROM jobs"
    )
    op.execute(
        f"INSERT INTO job_files_0005 ({_COLUMNS})"
        " SELECT id, 'output', 0, NULL, 'image', COALESCE(result_mime, 'image/png'), result_path,"
        " 1, COALESCE(finished_at, updated_at)"
        " FROM jobs WHERE result_path IS NOT NULL"
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("options", sa.JSON(), server_default="{}", nullable=False))
        batch_op.drop_column("result_mime")
        batch_op.drop_column("result_path")
        batch_op.drop_column("input_mime")
        batch_op.drop_column("input_path")
    _job_files("job_files", foreign_key=True)
    op.create_index(op.f("ix_job_files_job_id"), "job_files", ["job_id"], unique=False)
    op.execute(f"INSERT INTO job_files ({_COLUMNS}) SELECT {_COLUMNS} FROM job_files_0005")
    op.drop_table("job_files_0005")


def downgrade() -> None:
    # The first input and first output come back as the old columns; the rest is lost.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("input_path", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("input_mime", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("result_path", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("result_mime", sa.String(length=32), nullable=True))
    for column, field, role in (
        ("input_path", "path", "input"),
        ("input_mime", "mime", "input"),
        ("result_path", "path", "output"),
        ("result_mime", "mime", "output"),
    ):
        op.execute(
            f"UPDATE jobs SET {column} = (SELECT f.{field} FROM job_files f"
            f" WHERE f.job_id = jobs.id AND f.role = '{role}' AND f.position = 0)"
        )
    op.execute("UPDATE jobs SET input_path = '', input_mime = '' WHERE input_path IS NULL")
    op.drop_index(op.f("ix_job_files_job_id"), table_name="job_files")
    op.drop_table("job_files")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("input_path", nullable=False, existing_type=sa.String(300))
        batch_op.alter_column("input_mime", nullable=False, existing_type=sa.String(32))
        batch_op.drop_column("options")
        batch_op.drop_column("request_digest")
