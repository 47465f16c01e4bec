"""Shared fixtures: settings in a temp dir, a context on the fake hypervisor, a movable clock.

The database is SQLite in the temp dir, or with SHIFTDESK_TEST_DB=postgresql a PostgreSQL
database of its own per test (tests/postgres.py: one throwaway cluster per run; the application
connects as a role that may not rewrite the audit log, the schema's owner migrates)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.config import Settings
from controlplane.domain.groups import group_ref
from controlplane.domain.session import EndReason
from controlplane.drivers.fake import FakeDirectory, FakeHypervisor
from controlplane.main import build_context
from controlplane.services import broker, images, sessions
from controlplane.services.context import Context
from controlplane.services.tokens import Claims


class ManualClock:
    """A clock tests move by hand."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime(2026, 11, 24, 8, 0, tzinfo=UTC)

    def now(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


class FakeBuilder:
    """Writes a tiny but real qcow2 header, so registration and overlays have a file to point at."""

    def __init__(self) -> None:
        self.builds = 0
        self.variant = ""  # set it to make the next builds give other bytes (a new image version)

    def build(self, recipe: str, out_dir: Path) -> dict:
        self.builds += 1
        header = b"QFI\xfb" + b"\0" * 20 + (64 << 20).to_bytes(8, "big")
        (out_dir / "disk.qcow2").write_bytes(header + recipe.encode() + self.variant.encode())
        (out_dir / "vmlinuz").write_bytes(b"kernel")
        (out_dir / "initrd.img").write_bytes(b"initrd")
        import hashlib

        manifest = {"recipe": recipe, "cmdline": "root=/dev/vda", "packages": {"busybox-static": "1"},
                    "sha256": {"disk.qcow2": hashlib.sha256((out_dir / "disk.qcow2").read_bytes()).hexdigest()},
                    **({"memory_mib": 1024, "vcpus": 2} if recipe == "agent-desktop" else {})}  # as the recipes ask
        (out_dir / "manifest.json").write_text(json.dumps(manifest))
        return manifest


DATABASE = os.environ.get("SHIFTDESK_TEST_DB", "sqlite")
if DATABASE not in ("sqlite", "postgresql"):
    raise SystemExit(f"SHIFTDESK_TEST_DB: {DATABASE!r} is neither sqlite nor postgresql")


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the whole run, with a migrated template database."""
    from tests.postgres import Postgres  # noqa: PLC0415 - only runs that use PostgreSQL need psycopg

    cluster = Postgres().start()
    try:
        cluster.template = cluster.migrated_template()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_database(postgres) -> Iterator[str]:
    """A database of this test's own, copied from the migrated template, dropped after."""
    name = postgres.create_database(template=postgres.template)
    yield name
    postgres.drop_database(name)


def database_for(request: pytest.FixtureRequest) -> dict[str, str]:
    """Settings.db for this test: {} (SQLite in DATA_DIR), or with SHIFTDESK_TEST_DB=postgresql a
    database of its own, the application connecting as its restricted role."""
    if DATABASE != "postgresql":
        return {}
    from tests.postgres import APP, OWNER  # noqa: PLC0415

    cluster, name = request.getfixturevalue("postgres"), request.getfixturevalue("pg_database")
    return {"url": cluster.url(name, APP), "migrate_url": cluster.url(name, OWNER)}


def database_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a `shiftdesk` process (CLI, subprocess) SETTINGS' database."""
    urls = {"SHIFTDESK_DB__URL": settings.db.url, "SHIFTDESK_DB__MIGRATE_URL": settings.db.migrate_url}
    return {key: value for key, value in urls.items() if value}


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    return Settings(data_dir=tmp_path / "data", instance="unit", libvirt={"uri": "fake://"},
                    auth={"admin_group": ADMINS}, db=database_for(request))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def hv() -> FakeHypervisor:
    return FakeHypervisor()


def group(cn: str) -> str:
    """A test group by its canonical full DN (groups are matched by DN or SID, never by cn)."""
    return group_ref(f"CN={cn},OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test")  # as in policies/*.yaml


ADMINS, AGENTS, SALES, SUPPORT = (group(cn) for cn in ("shiftdesk-admins", "cc-agents", "cc-sales-team",
                                                        "cc-support"))
USERS = {
    "carol": ("Carol-pw-1234", {ADMINS, AGENTS}),
    "alice": ("Alice-pw-1234", {SALES, AGENTS}),
    "bob": ("Bob-pw-1234", {SUPPORT, AGENTS}),
    "dave": ("Dave-pw-1234", {SALES}),
}


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory({k: (v[0], set(v[1])) for k, v in USERS.items()}, disabled={"dave"})


@pytest.fixture
def ctx(settings: Settings, hv: FakeHypervisor, clock: ManualClock, directory: FakeDirectory) -> Context:
    context = build_context(settings, hypervisor=hv, directory=directory)
    context.clock = clock
    context.builder = FakeBuilder()
    return context


@pytest.fixture
def image(ctx: Context):
    return images.build(ctx, "busybox-desktop", actor="test")


@dataclass
class LiveSession:
    desktop: str
    display: sessions.Display
    limits: sessions.Limits


def open_session(ctx: Context, pool: str, *, user: str = "alice", connection: broker.Connection | None = None,
                 source: str = "t", grace_s: float = 300.0) -> LiveSession:
    """USER (an agent in AGENTS) connects to POOL, or uses CONNECTION's ticket, and the gateway
    opens the display, as it does between a ticket and the first pixels."""
    c = connection or broker.connect(ctx, Claims(user, "agent", (AGENTS,), "j", 0), pool)
    target = broker.redeem(ctx, c.ticket, user)
    limits = sessions.Limits(idle_s=900, max_s=3600, grace_s=grace_s)
    display = sessions.open_display(ctx, desktop_id=target.desktop_id, user=user, jti="j", source=source,
                                    gateway="t", limits=limits, period_s=2)
    return LiveSession(c.desktop, display, limits)


def end_session(ctx: Context, live: LiveSession, reason: str = EndReason.BROWSER_CLOSED) -> None:
    """The gateway closes the display for REASON."""
    sessions.close_display(ctx, live.display, desktop=live.desktop, reason=reason, bytes_in=0, bytes_out=0,
                           events=[], limits=live.limits, period_s=2)
