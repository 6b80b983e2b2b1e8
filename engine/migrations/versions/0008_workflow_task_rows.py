"""One row per task of a case's serialized workflow (workflow_task); workflow_state keeps the head

Revision ID: 0008
Revises: 0007
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BATCH = 500


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def upgrade() -> None:
    op.create_table(
        "workflow_task",
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("task_guid", sa.String(length=36), nullable=False),
        sa.Column("workflow", sa.String(length=36), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["instance_id"], ["process_instance.id"],
                                name=op.f("fk_workflow_task_instance_id_process_instance"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_id", "seq", name=op.f("pk_workflow_task")),
        sqlite_with_rowid=False,
    )
    # Split every stored workflow into its head and its task rows.
    conn = op.get_bind()
    states = sa.table("workflow_state", sa.column("instance_id", sa.Integer), sa.column("body", sa.Text))
    tasks = sa.table("workflow_task", sa.column("instance_id", sa.Integer), sa.column("seq", sa.Integer),
                     sa.column("task_guid", sa.String), sa.column("workflow", sa.String), sa.column("body", sa.Text))
    last = 0
    while True:
        batch = conn.execute(sa.select(states.c.instance_id, states.c.body).where(states.c.instance_id > last)
                             .order_by(states.c.instance_id).limit(BATCH)).all()
        if not batch:
            break
        for instance_id, body in batch:
            state = json.loads(body)
            rows = [(guid, "", task) for guid, task in state.get("tasks", {}).items()]
            subprocesses = state.get("subprocesses", {})
            rows += [(guid, sub_id, task) for sub_id, sub in subprocesses.items()
                     for guid, task in sub.get("tasks", {}).items()]
            state["tasks"] = {}
            for sub in subprocesses.values():
                sub["tasks"] = {}
            conn.execute(states.update().where(states.c.instance_id == instance_id).values(body=_dumps(state)))
            if rows:
                conn.execute(tasks.insert(), [{"instance_id": instance_id, "seq": seq, "task_guid": guid,
                                               "workflow": key, "body": _dumps(task)}
                                              for seq, (guid, key, task) in enumerate(rows)])
        last = batch[-1][0]


def downgrade() -> None:
    conn = op.get_bind()
    states = sa.table("workflow_state", sa.column("instance_id", sa.Integer), sa.column("body", sa.Text))
    tasks = sa.table("workflow_task", sa.column("instance_id", sa.Integer), sa.column("seq", sa.Integer),
                     sa.column("task_guid", sa.String), sa.column("workflow", sa.String), sa.column("body", sa.Text))
    for instance_id, body in conn.execute(sa.select(states.c.instance_id, states.c.body)).all():
        state = json.loads(body)
        for guid, key, task in conn.execute(sa.select(tasks.c.task_guid, tasks.c.workflow, tasks.c.body)
                                            .where(tasks.c.instance_id == instance_id).order_by(tasks.c.seq)):
            (state["subprocesses"][key] if key else state)["tasks"][guid] = json.loads(task)
        conn.execute(states.update().where(states.c.instance_id == instance_id).values(body=_dumps(state)))
    op.drop_table("workflow_task")
