"""egress: the groups of the agent a desktop is assigned to, as their sign-in token carried them,
so the host's resolver applies that agent's domain allowlist (and re-applies it when policies
change) without asking the directory again

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'


def upgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('assigned_groups', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('desktops', schema=None) as batch_op:
        batch_op.drop_column('assigned_groups')
