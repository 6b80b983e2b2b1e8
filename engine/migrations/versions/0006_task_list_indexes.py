"""Indexes that keep the clerks' task lists under 300 ms with 100,000 open tasks

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = [
    ("human_task", "ix_human_task_queue_walk", ["status", "assignee", "due_at", "id", "instance_id", "light"]),
    ("human_task", "ix_human_task_delegated_from_status", ["delegated_from", "status"]),
    ("human_task", "ix_human_task_completed_by_at", ["completed_by", "completed_at", "instance_id"]),
    ("process_instance", "ix_process_instance_applicant", ["applicant"]),
    ("process_instance", "ix_process_instance_definition_status", ["definition_id", "status"]),
]


def upgrade() -> None:
    for table, name, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for table, name, _ in INDEXES:
        op.drop_index(name, table_name=table)
