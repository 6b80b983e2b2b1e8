"""Merge the designer, supervision and public schema branches; index task_queue by task

Revision ID: 0005
Revises: 0002, 0003, 0004
"""
from alembic import op

revision = "0005"
down_revision = ("0002", "0003", "0004")
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("task_queue", schema=None) as batch_op:
        batch_op.create_index("ix_task_queue_human_task_id", ["human_task_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task_queue", schema=None) as batch_op:
        batch_op.drop_index("ix_task_queue_human_task_id")
