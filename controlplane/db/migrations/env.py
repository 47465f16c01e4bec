"""Alembic environment: runs on the connection handed over by db.engine.migrate()."""

from alembic import context
from sqlmodel import SQLModel

import controlplane.db.models  # noqa: F401 - registers the tables
from controlplane.db.migrations import include_object

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=SQLModel.metadata, render_as_batch=True,
                  include_object=include_object)
with context.begin_transaction():
    context.run_migrations()
