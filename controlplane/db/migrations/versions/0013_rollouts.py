"""rollouts: a pool's move to a new image version (canary, batches, rollback) and the signals it
watches, one row per observation

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0013'
down_revision = '0012'


def upgrade() -> None:
    op.create_table(
        'rollouts',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pool_id', sa.Integer(), nullable=False),
        sa.Column('from_image_id', sa.Integer(), nullable=False),
        sa.Column('to_image_id', sa.Integer(), nullable=False),
        sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('canary', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column('batch', sa.Integer(), nullable=False),
        sa.Column('soak_s', sa.Float(), nullable=False),
        sa.Column('thresholds', sa.JSON(), nullable=False),
        sa.Column('reason', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('actor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['pool_id'], ['pools.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_rollouts_pool_id', 'rollouts', ['pool_id'])
    op.create_index('ix_rollouts_state', 'rollouts', ['state'])
    op.create_table(
        'rollout_signals',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('rollout_id', sa.Integer(), nullable=False),
        sa.Column('version', sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column('signal', sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column('value', sa.Float(), nullable=False),
        sa.Column('desktop', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['rollout_id'], ['rollouts.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_rollout_signals_rollout_id', 'rollout_signals', ['rollout_id'])


def downgrade() -> None:
    op.drop_index('ix_rollout_signals_rollout_id', table_name='rollout_signals')
    op.drop_table('rollout_signals')
    op.drop_index('ix_rollouts_state', table_name='rollouts')
    op.drop_index('ix_rollouts_pool_id', table_name='rollouts')
    op.drop_table('rollouts')
