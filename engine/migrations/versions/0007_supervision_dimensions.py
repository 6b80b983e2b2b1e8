"""Statistics roll-up by window clerk, department and step too, so every filter reads pre-summed days

The old supervision_day (day, flow, department, metric) is a cache of the audit trail: it is dropped and the
worker's next roll-up fills the new one (until then statistics count the days live, with the same figures).

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FIGURES = (
    "received", "completed", "terminated", "case_warnings", "cases_overdue", "statutory_exceeded", "pauses",
    "task_warnings", "tasks_overdue", "deemed_consents", "send_backs", "tasks_completed",
    "dur_n", "dur_on_time", "dur_early", "dur_net", "dur_net_c", "dur_committed", "dur_net_s", "dur_statutory",
    "cases_green", "cases_yellow", "cases_red", "tasks_green", "tasks_yellow", "tasks_red",
    "ratings", "rating_sum", "rating_satisfied", "step_completed", "step_late", "step_closed", "step_seconds",
)


def upgrade() -> None:
    op.drop_table("supervision_day")
    op.create_table(
        "supervision_day",
        sa.Column("clerk", sa.String(length=64), nullable=False),
        sa.Column("item", sa.String(length=255), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("flow", sa.String(length=255), nullable=False),
        *[sa.Column(name, sa.BigInteger(), nullable=False) for name in FIGURES],
        sa.Column("histogram", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("clerk", "item", "department", "day", "flow", name=op.f("pk_supervision_day")),
    )
    op.create_index("ix_supervision_day_department_item_day", "supervision_day", ["department", "item", "day"])
    roll = op.create_table(
        "supervision_roll",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rolled_until", sa.Date(), nullable=True),
        sa.Column("checked_at", sa.DateTime(), nullable=True),
        sa.Column("seen", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_supervision_roll")),
    )
    # Its one row, there from the start, so no request waits on a first roll-up's uncommitted insert.
    op.bulk_insert(roll, [{"id": 1, "rolled_until": None, "checked_at": None, "seen": []}])


def downgrade() -> None:
    op.drop_table("supervision_roll")
    op.drop_index("ix_supervision_day_department_item_day", table_name="supervision_day")
    op.drop_table("supervision_day")
    op.create_table(
        "supervision_day",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("flow", sa.String(length=255), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=False),
        sa.Column("metric", sa.String(length=40), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "flow", "department", "metric", name=op.f("pk_supervision_day")),
    )
