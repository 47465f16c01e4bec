"""policy revisions and rosters keep the YAML text they were applied from, so the per-document
API (and Terraform through it) reads back exactly what it wrote

Revision ID: 0015
Revises: 0014
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0015'
down_revision = '0014'


def upgrade() -> None:
    with op.batch_alter_table('policy_revisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sources', sa.JSON(), nullable=True))
    with op.batch_alter_table('rosters', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('rosters', schema=None) as batch_op:
        batch_op.drop_column('source')
    with op.batch_alter_table('policy_revisions', schema=None) as batch_op:
        batch_op.drop_column('sources')
