"""supervision: violations (append-only but closable), their notes, case durations, statistics indexes

Revision ID: 0003
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None

# Columns that describe the breach itself; a supervisor may only close a violation, never rewrite it.
_FACTS = ("source_key", "kind", "instance_id", "task_id", "bpmn_id", "department", "clerk", "occurred_at", "due_at")


def upgrade() -> None:
    op.create_table('violation',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('source_key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('bpmn_id', sa.String(length=255), nullable=True),
    sa.Column('department', sa.String(length=64), nullable=True),
    sa.Column('clerk', sa.String(length=64), nullable=True),
    sa.Column('occurred_at', sa.DateTime(), nullable=False),
    sa.Column('due_at', sa.DateTime(), nullable=True),
    sa.Column('closed_at', sa.DateTime(), nullable=True),
    sa.Column('closed_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['instance_id'], ['process_instance.id'], name=op.f('fk_violation_instance_id_process_instance')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_violation')),
    sa.UniqueConstraint('source_key', name=op.f('uq_violation_source_key'))
    )
    with op.batch_alter_table('violation', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_violation_instance_id'), ['instance_id'], unique=False)
        batch_op.create_index('ix_violation_occurred_at', ['occurred_at'], unique=False)
        batch_op.create_index('ix_violation_department_occurred', ['department', 'occurred_at'], unique=False)
    op.create_table('violation_note',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('violation_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['violation_id'], ['violation.id'], name=op.f('fk_violation_note_violation_id_violation')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_violation_note'))
    )
    with op.batch_alter_table('violation_note', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_violation_note_violation_id'), ['violation_id'], unique=False)
    op.create_table('case_duration',
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('ended_at', sa.DateTime(), nullable=False),
    sa.Column('taken_seconds', sa.Integer(), nullable=False),
    sa.Column('paused_seconds', sa.Integer(), nullable=False),
    sa.Column('net_seconds', sa.Integer(), nullable=False),
    sa.Column('committed_seconds', sa.Integer(), nullable=True),
    sa.Column('statutory_seconds', sa.Integer(), nullable=True),
    sa.Column('on_time', sa.Boolean(), nullable=False),
    sa.Column('early', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['process_instance.id'], name=op.f('fk_case_duration_instance_id_process_instance'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('instance_id', name=op.f('pk_case_duration'))
    )
    with op.batch_alter_table('case_duration', schema=None) as batch_op:
        batch_op.create_index('ix_case_duration_ended_at', ['ended_at'], unique=False)
        batch_op.create_index('ix_case_duration_net_seconds', ['net_seconds'], unique=False)
    op.create_table('supervision_day',
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('flow', sa.String(length=255), nullable=False),
    sa.Column('department', sa.String(length=64), nullable=False),
    sa.Column('metric', sa.String(length=40), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'flow', 'department', 'metric', name=op.f('pk_supervision_day'))
    )
    with op.batch_alter_table('process_instance', schema=None) as batch_op:
        batch_op.create_index('ix_process_instance_ended_at', ['ended_at'], unique=False)
    with op.batch_alter_table('human_task', schema=None) as batch_op:
        batch_op.create_index('ix_human_task_completed_at', ['completed_at'], unique=False)
    _protect()


def _protect() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("CREATE TRIGGER violation_no_delete BEFORE DELETE ON violation "
                   "BEGIN SELECT RAISE(ABORT, 'violation records are never deleted'); END")
        op.execute(f"CREATE TRIGGER violation_facts_fixed BEFORE UPDATE OF {', '.join(_FACTS)} ON violation "
                   "BEGIN SELECT RAISE(ABORT, 'a violation''s facts cannot be changed'); END")
        op.execute("CREATE TRIGGER violation_closed_once BEFORE UPDATE ON violation WHEN OLD.closed_at IS NOT NULL "
                   "BEGIN SELECT RAISE(ABORT, 'a closed violation stays closed'); END")
        for action in ("UPDATE", "DELETE"):
            op.execute(f"CREATE TRIGGER violation_note_no_{action.lower()} BEFORE {action} ON violation_note "
                       "BEGIN SELECT RAISE(ABORT, 'violation_note is append-only'); END")
        return
    changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in _FACTS)
    op.execute(f"""CREATE OR REPLACE FUNCTION violation_guard() RETURNS trigger AS $$
        BEGIN
          IF TG_OP = 'DELETE' THEN RAISE EXCEPTION 'violation records are never deleted'; END IF;
          IF OLD.closed_at IS NOT NULL THEN RAISE EXCEPTION 'a closed violation stays closed'; END IF;
          IF {changed} THEN RAISE EXCEPTION 'a violation''s facts cannot be changed'; END IF;
          RETURN NEW;
        END; $$ LANGUAGE plpgsql""")
    op.execute("CREATE TRIGGER violation_guard BEFORE UPDATE OR DELETE ON violation "
               "FOR EACH ROW EXECUTE FUNCTION violation_guard()")
    op.execute("""CREATE OR REPLACE FUNCTION violation_note_append_only() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'violation_note is append-only'; END; $$ LANGUAGE plpgsql""")
    op.execute("CREATE TRIGGER violation_note_append_only BEFORE UPDATE OR DELETE ON violation_note "
               "FOR EACH ROW EXECUTE FUNCTION violation_note_append_only()")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("violation_no_delete", "violation_facts_fixed", "violation_closed_once",
                     "violation_note_no_update", "violation_note_no_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    else:
        op.execute("DROP TRIGGER IF EXISTS violation_guard ON violation")
        op.execute("DROP TRIGGER IF EXISTS violation_note_append_only ON violation_note")
        op.execute("DROP FUNCTION IF EXISTS violation_guard()")
        op.execute("DROP FUNCTION IF EXISTS violation_note_append_only()")
    with op.batch_alter_table('human_task', schema=None) as batch_op:
        batch_op.drop_index('ix_human_task_completed_at')
    with op.batch_alter_table('process_instance', schema=None) as batch_op:
        batch_op.drop_index('ix_process_instance_ended_at')
    op.drop_table('supervision_day')
    op.drop_table('case_duration')
    op.drop_table('violation_note')
    op.drop_table('violation')
