"""desktop networking: each desktop's address on its host's desktop network (the MAC and the
host-side port follow from it, domain/network.py), unique per host

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'


def upgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ipv4', sa.String(length=15), nullable=True))
        batch_op.create_index('ix_desktops_host_ipv4', ['host_id', 'ipv4'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.drop_index('ix_desktops_host_ipv4')
        batch_op.drop_column('ipv4')
