from __future__ import annotations

import stat
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from controlplane.db.engine import session_scope
from controlplane.errors import Conflict, InvalidInput, NotFound
from controlplane.services import images, pools


def test_build_registers_an_immutable_version(ctx, image):
    assert (image.name, image.version, len(image.sha256)) == ("busybox-desktop", 1, 64)
    disk = Path(image.disk_path)
    assert disk.parent.name == image.sha256 and not disk.stat().st_mode & stat.S_IWUSR
    again = images.build(ctx, "busybox-desktop", actor="t")
    assert again.id == image.id, "identical bytes must not become a new version"


def test_resolve_versions_and_deprecation(ctx, image):
    assert images.get(ctx, "busybox-desktop:1").id == image.id
    images.deprecate(ctx, "busybox-desktop:1", actor="t")
    with pytest.raises(NotFound):
        images.get(ctx, "busybox-desktop")  # deprecated versions are not picked by name
    with pytest.raises(NotFound):
        images.get(ctx, "busybox-desktop:x")


def test_delete_refused_while_used(ctx, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=0, actor="t")
    with pytest.raises(Conflict):
        images.delete(ctx, "busybox-desktop:1", actor="t")
    assert images.list_all(ctx)


def test_unknown_recipe_names_the_field(ctx):
    from controlplane.drivers.image_builder import ScriptImageBuilder

    ctx.builder = ScriptImageBuilder(images_dir=Path(__file__).resolve().parents[3] / "images", cache_dir=Path("/tmp"))
    for bad in ("nope", "../etc", "A"):
        with pytest.raises(InvalidInput) as e:
            images.build(ctx, bad, actor="t")
        assert e.value.field == "recipe"


def test_audit_log_is_append_only(ctx, image):
    with pytest.raises(DatabaseError), session_scope(ctx.engine) as session:
        session.execute(text("UPDATE audit_events SET actor = 'mallory'"))
    with pytest.raises(DatabaseError), session_scope(ctx.engine) as session:
        session.execute(text("DELETE FROM audit_events"))


def test_sqlite_runs_in_wal_mode(ctx):
    if ctx.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only: this run's database is PostgreSQL")
    with ctx.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
