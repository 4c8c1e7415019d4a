"""series_instance table (what each series version holds); job.not_before and job.deferrals

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "series_instance",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("byte_count", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("series_id", "sop_instance_uid", name="uq_series_instance_sop"),
    )
    with op.batch_alter_table("series_instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_series_instance_series_id"), ["series_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_series_instance_sop_instance_uid"), ["sop_instance_uid"], unique=False
        )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("not_before", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("deferrals", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("deferrals")
        batch_op.drop_column("not_before")
    with op.batch_alter_table("series_instance", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_series_instance_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_series_instance_series_id"))
    op.drop_table("series_instance")
