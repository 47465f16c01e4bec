"""the audit log is append-only on PostgreSQL too: triggers refuse UPDATE, DELETE and TRUNCATE
for every role (the owner's included), and nobody but the owner holds those privileges (the
application's role is granted INSERT and SELECT only: db/engine.grant_app). SQLite's guard is
0001's triggers; nothing changes there.

Revision ID: 0011
Revises: 0010
"""

from alembic import op

revision = '0011'
down_revision = '0010'

TRIGGERS = {  # name -> the trigger's timing clause
    "audit_events_no_update": "BEFORE UPDATE ON audit_events FOR EACH ROW",
    "audit_events_no_delete": "BEFORE DELETE ON audit_events FOR EACH ROW",
    "audit_events_no_truncate": "BEFORE TRUNCATE ON audit_events FOR EACH STATEMENT",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
               "BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$")
    for name, timing in TRIGGERS.items():
        op.execute(f"CREATE TRIGGER {name} {timing} EXECUTE FUNCTION audit_events_append_only()")
    op.execute("REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON audit_events")
    op.execute("DROP FUNCTION audit_events_append_only()")
