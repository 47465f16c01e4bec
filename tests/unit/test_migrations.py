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


def test_assigned_groups_of_nobody_are_sql_null_and_0018_converts_json_null(ctx, settings, image):
    """A pass reads every desktop's assigned groups: nobody's are SQL NULL (no JSON to decode),
    and rows written before as the JSON text 'null' become NULL by the migration."""
    from alembic import command
    from sqlalchemy import text

    from controlplane.db.engine import alembic_config
    from controlplane.services import pools

    pools.create(ctx, name="sales", image="busybox-desktop", size=1, clone="cold", actor="t")
    from tests.unit.services.test_reconciler import settle

    settle(ctx)
    nulls = text("SELECT count(*) FROM desktops WHERE assigned_groups IS NULL")
    with ctx.engine.begin() as conn:
        assert conn.execute(nulls).scalar() == 1
        conn.execute(text("UPDATE desktops SET assigned_groups = 'null'"))  # as stored before 0018
        assert conn.execute(nulls).scalar() == 0
    owner = make_engine(settings.db.migrate_url) if settings.db.migrate_url else ctx.engine  # PostgreSQL: the schema's
    with owner.begin() as conn:
        command.stamp(alembic_config(conn), "0017")
    migrate(owner)
    with ctx.engine.begin() as conn:
        assert conn.execute(nulls).scalar() == 1
