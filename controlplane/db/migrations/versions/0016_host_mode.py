"""hosts have a mode an admin sets (active, or maintenance: no new desktops, idle ones move
away), and since when; and when the control plane fenced one (it stopped answering and its host
agent's lease ran out). Pools keep why no host takes their next desktop, if none does.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0016'
down_revision = '0015'


def upgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mode', sa.String(length=16), nullable=False, server_default='active'))
        batch_op.add_column(sa.Column('mode_since', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False,
                                      server_default=sa.func.current_timestamp()))
        batch_op.add_column(sa.Column('fenced_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unplaceable', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('unplaceable')
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('fenced_at')
        batch_op.drop_column('mode_since')
        batch_op.drop_column('mode')
