"""the shift scheduler's job table (APScheduler's SQLAlchemyJobStore, as it would create it), made
by the migrations: on PostgreSQL the application's role may not create tables. Databases where
APScheduler already made it keep theirs.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'

TABLE = "apscheduler_jobs"  # not a model: APScheduler owns its rows (see db/migrations/env.py)


def upgrade() -> None:
    if TABLE in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        TABLE,
        sa.Column("id", sa.Unicode(191), primary_key=True),
        sa.Column("next_run_time", sa.Float(25), index=True),
        sa.Column("job_state", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
