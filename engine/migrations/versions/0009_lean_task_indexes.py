"""Fewer pages written per completed task: task_queue without a rowid (SQLite), delegation index only of delegated tasks

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DELEGATED = "delegated_from IS NOT NULL"


def _queue_table(name: str, with_rowid: bool) -> None:
    op.create_table(
        name,
        sa.Column("department_key", sa.String(length=64), nullable=False),
        sa.Column("human_task_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["human_task_id"], ["human_task.id"],
                                name="fk_task_queue_human_task_id_human_task", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("department_key", "human_task_id", name="pk_task_queue"),
        sqlite_with_rowid=with_rowid,
    )


def _rebuild_queue(with_rowid: bool) -> None:
    # SQLite cannot drop a table's rowid in place: build the new table, copy, swap.
    op.drop_index("ix_task_queue_human_task_id", table_name="task_queue")
    op.rename_table("task_queue", "task_queue_old")
    _queue_table("task_queue", with_rowid)
    op.execute("INSERT INTO task_queue (department_key, human_task_id) "
               "SELECT department_key, human_task_id FROM task_queue_old")
    op.drop_table("task_queue_old")
    op.create_index("ix_task_queue_human_task_id", "task_queue", ["human_task_id"], unique=False)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_queue(with_rowid=False)
    op.drop_index("ix_human_task_delegated_from_status", table_name="human_task")
    op.create_index("ix_human_task_delegated_from_status", "human_task", ["delegated_from", "status"], unique=False,
                    sqlite_where=sa.text(DELEGATED), postgresql_where=sa.text(DELEGATED))


def downgrade() -> None:
    op.drop_index("ix_human_task_delegated_from_status", table_name="human_task")
    op.create_index("ix_human_task_delegated_from_status", "human_task", ["delegated_from", "status"], unique=False)
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_queue(with_rowid=True)
