"""designer: version activation date and case migrations

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('process_definition', schema=None) as batch_op:
        batch_op.add_column(sa.Column('activates_at', sa.DateTime(), nullable=True))
    op.create_table('case_migration',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('from_definition_id', sa.Integer(), nullable=False),
    sa.Column('to_definition_id', sa.Integer(), nullable=False),
    sa.Column('migrated_at', sa.DateTime(), nullable=False),
    sa.Column('migrated_by', sa.String(length=64), nullable=True),
    sa.Column('revision_after', sa.Integer(), nullable=False),
    sa.Column('state_before', sa.Text(), nullable=False),
    sa.Column('projection_before', sa.JSON(), nullable=False),
    sa.Column('mapping', sa.JSON(), nullable=False),
    sa.Column('rolled_back_at', sa.DateTime(), nullable=True),
    sa.Column('rolled_back_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['from_definition_id'], ['process_definition.id'], name=op.f('fk_case_migration_from_definition_id_process_definition')),
    sa.ForeignKeyConstraint(['instance_id'], ['process_instance.id'], name=op.f('fk_case_migration_instance_id_process_instance'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['to_definition_id'], ['process_definition.id'], name=op.f('fk_case_migration_to_definition_id_process_definition')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_case_migration'))
    )
    with op.batch_alter_table('case_migration', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_case_migration_instance_id'), ['instance_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('case_migration', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_case_migration_instance_id'))
    op.drop_table('case_migration')
    with op.batch_alter_table('process_definition', schema=None) as batch_op:
        batch_op.drop_column('activates_at')
