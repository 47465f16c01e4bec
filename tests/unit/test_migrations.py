"""The migrations build exactly the schema the models describe (no drift), and run twice safely,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from controlplane.db.engine import make_engine, migrate
from controlplane.db.migrations import include_object


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    cluster = request.getfixturevalue("postgres")
    return cluster.url(request.getfixturevalue("empty_pg_database"))


@pytest.fixture
def empty_pg_database(postgres):
    name = postgres.create_database()
    yield name
    postgres.drop_database(name)


def test_migrated_schema_matches_models(url):
    engine = make_engine(url)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        diff = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert diff == [], f"models changed without a migration: {diff}"
