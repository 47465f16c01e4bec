"""Tables. These are storage, not API schemas (see api/schemas.py for what clients see)."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, Index, String, UniqueConstraint
from sqlmodel import Field, SQLModel

from controlplane.domain.desktop import DesktopState
from controlplane.domain.placement import HostMode
from controlplane.domain.ports import CloneMode


def utcnow() -> datetime:
    return datetime.now(UTC)


class Host(SQLModel, table=True):
    """A libvirt host desktops run on, reached by its URI. `mode` is what an admin wants of it;
    whether it answers is observed on each reconcile pass, never stored as truth."""

    __tablename__ = "hosts"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    uri: str
    mode: HostMode = Field(default=HostMode.ACTIVE, sa_column=Column(String(16), nullable=False,
                                                                     server_default=HostMode.ACTIVE.value))
    mode_since: datetime = Field(default_factory=utcnow)
    fenced_at: datetime | None = None  # it stopped answering and its lease ran out: its desktops were given up
    created_at: datetime = Field(default_factory=utcnow)


class Image(SQLModel, table=True):
    """An immutable golden-image version. Its files never change; a rebuild is a new version."""

    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("name", "version"), UniqueConstraint("name", "sha256"))
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True)
    version: int
    recipe: str
    sha256: str
    size_bytes: int
    disk_path: str
    kernel_path: str
    initrd_path: str | None = None
    cmdline: str
    manifest: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    deprecated: bool = False
    built_at: datetime = Field(default_factory=utcnow)


class Pool(SQLModel, table=True):
    __tablename__ = "pools"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    image_id: int = Field(foreign_key="images.id", index=True)
    min_size: int = 0
    max_size: int = 50
    target_size: int = 0
    memory_mib: int = 256
    vcpus: int = 1
    clone: CloneMode = Field(default=CloneMode.INSTANT, sa_column=Column(  # restore from a template, or boot
        String(16), nullable=False, server_default=CloneMode.INSTANT.value))
    memory_sharing: bool = True  # the host may merge its desktops' identical pages (KSM); policies can forbid it
    unplaceable: str | None = None  # why no host takes its next desktop, host by host (the reconciler's last pass)
    deleting: bool = False
    groups: list = Field(default_factory=list, sa_column=Column(JSON, nullable=False))  # AD groups entitled
    created_at: datetime = Field(default_factory=utcnow)


class Desktop(SQLModel, table=True):
    __tablename__ = "desktops"
    __table_args__ = (Index("ix_desktops_host_ipv4", "host_id", "ipv4", unique=True),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    pool_id: int = Field(foreign_key="pools.id", index=True)
    host_id: int = Field(foreign_key="hosts.id")
    image_id: int = Field(foreign_key="images.id")
    state: DesktopState = Field(default=DesktopState.PROVISIONING, index=True)
    reason: str | None = None
    generation: int = 1
    disk_path: str | None = None
    assigned_to: str | None = Field(default=None, index=True)  # the agent whose session this is
    # that agent's groups as their sign-in carried them (the resolver applies their allowlist)
    # SQL NULL when nobody is on it (not JSON null: a pass reads every row, and NULL needs no decoding)
    assigned_groups: list | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    grace_until: datetime | None = None  # no live display session: recycled after this moment
    disconnect_requested: bool = False  # an admin asked the gateway to end the live session
    logoff_at: datetime | None = None  # ramp-down: the live session is ended at this moment
    failures: int = 0  # the reconciler's steps on it that failed in a row (reset by a success)
    retry_at: datetime | None = None  # its last step failed: the reconciler leaves it alone until then
    created_at: datetime = Field(default_factory=utcnow)
    state_since: datetime = Field(default_factory=utcnow)
    ipv4: str | None = Field(default=None, max_length=15)  # on its host's desktop network (domain/network.py)


class AuditEvent(SQLModel, table=True):
    """Append-only: database triggers refuse UPDATE and DELETE (see the first migration)."""

    __tablename__ = "audit_events"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str
    action: str = Field(index=True)
    target: str
    detail: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Lease(SQLModel, table=True):
    """A named lease (the reconciler's): at most one holder until it expires."""

    __tablename__ = "leases"
    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime
    epoch: int = 1  # raised whenever another holder takes the lease: a stale holder's writes are refused


class PolicyRevision(SQLModel, table=True):
    """One applied set of policies. Revisions are never changed; a rollback is a new revision."""

    __tablename__ = "policy_revisions"
    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)
    actor: str
    comment: str = ""
    sha256: str
    documents: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    # policy name -> the YAML text it was applied from, comments and order kept, so a declarative
    # client (Terraform) reads back exactly what it wrote; None for revisions made before 0015
    sources: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    rollback_of: int | None = None


class ApiSession(SQLModel, table=True):
    """An issued API token (by its id): logout and revocation mark it, verification checks it."""

    __tablename__ = "api_sessions"
    jti: str = Field(primary_key=True)
    username: str = Field(index=True)
    role: str
    issued_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None


class ConnectTicket(SQLModel, table=True):
    """A single-use, seconds-long right to open one desktop's display. Only its hash is stored."""

    __tablename__ = "connect_tickets"
    digest: str = Field(primary_key=True)  # sha256 of the ticket
    username: str = Field(index=True)
    desktop_id: int = Field(foreign_key="desktops.id", index=True)
    expires_at: datetime
    used_at: datetime | None = None


class DisplaySession(SQLModel, table=True):
    """A live display session through a gateway: one row per open WebSocket, removed when it ends.

    A desktop is in use while any row of it is fresh: the disconnect grace starts only when the
    last one ends, so a second tab or a half-open socket never lets the reconciler recycle a
    desktop someone is working in. The gateway refreshes `seen_at` every watchdog period; a row
    whose gateway died stops being refreshed and counts for nothing once it is stale."""

    __tablename__ = "display_sessions"
    id: int | None = Field(default=None, primary_key=True)
    desktop_id: int = Field(index=True)  # no foreign key: the row must outlive a desktop torn down under it
    username: str = Field(index=True)
    source: str
    gateway: str  # host:pid of the gateway process serving it
    started_at: datetime = Field(default_factory=utcnow)
    seen_at: datetime = Field(default_factory=utcnow)
    # what the gateway saw by its last heartbeat, for the console: bytes each way, the last key or pointer
    bytes_from_browser: int = 0
    bytes_to_browser: int = 0
    input_at: datetime | None = None


class Rollout(SQLModel, table=True):
    """A pool's move from one image version to another (domain/rollout.py). At most one active
    per pool; finished ones stay as history."""

    __tablename__ = "rollouts"
    id: int | None = Field(default=None, primary_key=True)
    pool_id: int = Field(foreign_key="pools.id", index=True)
    # no foreign keys: an image version no desktop uses any more may be deleted, its rollouts stay as history
    from_image_id: int
    to_image_id: int
    state: str = Field(max_length=16, index=True)  # RolloutState
    canary: str = Field(max_length=8)  # as asked: "2" or "10%"
    batch: int = 1
    soak_s: float = 300.0
    thresholds: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    reason: str = ""
    actor: str
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class RolloutSignal(SQLModel, table=True):
    """One observation during a rollout (a desktop ready, failed, restarted; a session ended or
    dropped early), by version. Rows are only ever added: no read-modify-write between the
    reconciler's parallel steps and the gateways."""

    __tablename__ = "rollout_signals"
    id: int | None = Field(default=None, primary_key=True)
    rollout_id: int = Field(foreign_key="rollouts.id", index=True)
    version: str = Field(max_length=8)  # Version
    signal: str = Field(max_length=16)  # Signal
    value: float = 0.0
    desktop: str
    at: datetime = Field(default_factory=utcnow)


class RosterRecord(SQLModel, table=True):
    """A pool's roster, as validated from its file (one per pool; replaced as a whole on apply)."""

    __tablename__ = "rosters"
    id: int | None = Field(default=None, primary_key=True)
    pool_id: int = Field(foreign_key="pools.id", unique=True)
    document: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str | None = None  # the YAML text it was applied from (None before 0015)
    sha256: str
    applied_at: datetime = Field(default_factory=utcnow)
    actor: str
