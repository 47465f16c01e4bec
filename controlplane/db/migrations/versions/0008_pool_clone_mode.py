"""instant clones: each pool says whether its desktops are restored from a template or booted

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


def downgrade() -> None:
    with op.batch_alter_table('pools', schema=None) as batch_op:
        batch_op.drop_column('clone')
