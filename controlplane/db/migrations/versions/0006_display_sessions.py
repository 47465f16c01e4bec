"""display sessions

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0005'


def upgrade() -> None:
    op.create_table('display_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('desktop_id', sa.Integer(), nullable=False),
    sa.Column('username', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('gateway', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('started_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.Column('seen_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('display_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_display_sessions_desktop_id'), ['desktop_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_display_sessions_username'), ['username'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('display_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_display_sessions_username'))
        batch_op.drop_index(batch_op.f('ix_display_sessions_desktop_id'))
    op.drop_table('display_sessions')
