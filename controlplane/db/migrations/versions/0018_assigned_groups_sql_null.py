"""a desktop nobody is on stores its assigned groups as SQL NULL, not the JSON text 'null': a
reconcile pass reads every desktop's groups, and a NULL needs no JSON decoding

Revision ID: 0018
Revises: 0017
"""

from alembic import op

revision = '0018'
down_revision = '0017'


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # json has no equality: compare its text
        op.execute("UPDATE desktops SET assigned_groups = NULL WHERE assigned_groups::text = 'null'")
    else:
        op.execute("UPDATE desktops SET assigned_groups = NULL WHERE assigned_groups = 'null'")


def downgrade() -> None:
    pass  # NULL reads as None under either model: nothing to undo
