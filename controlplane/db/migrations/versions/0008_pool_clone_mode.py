"""instant clones: each pool says whether its desktops are restored from a template or booted,
and whether the host may merge their memory pages (KSM)

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'


def upgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.add_column(sa.Column('clone', sa.String(length=16), nullable=False, server_default='instant'))
        batch_op.add_column(sa.Column('memory_sharing', sa.Boolean(), nullable=False, server_default=sa.true()))


def downgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('memory_sharing')
        batch_op.drop_column('clone')
