"""reconcile retries: per-desktop failure count and back-off

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0007'
down_revision = '0006'


def upgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failures', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('retry_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.drop_column('retry_at')
        batch_op.drop_column('failures')
