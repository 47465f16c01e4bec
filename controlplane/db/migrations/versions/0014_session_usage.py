"""display sessions: bytes each way and the last input, as the gateway saw them at its last
heartbeat, so the console can show who is working and who is idle

Revision ID: 0014
Revises: 0013
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0014'
down_revision = '0013'


def upgrade() -> None:
    with op.batch_alter_table('display_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bytes_from_browser', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('bytes_to_browser', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('input_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('display_sessions', schema=None) as batch_op:
        batch_op.drop_column('input_at')
        batch_op.drop_column('bytes_to_browser')
        batch_op.drop_column('bytes_from_browser')
