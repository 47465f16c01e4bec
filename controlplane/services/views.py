"""Public views of images, pools, hosts and desktops: what the API returns and `--json` prints."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel

from controlplane.db.models import Desktop, Image, Pool
from controlplane.domain.desktop import DesktopState
from controlplane.domain.placement import HostMode
from controlplane.domain.ports import HostCapacity


class ImagePublic(BaseModel):
    id: int
    name: str
    version: int
    recipe: str
    sha256: str
    size_bytes: int
    deprecated: bool
    built_at: datetime
    packages: dict[str, str]


class PoolPublic(BaseModel):
    id: int
    name: str
    image: str
    size: int
    min_size: int
    max_size: int
    memory_mib: int
    vcpus: int
    clone: str
    memory_sharing: bool
    deleting: bool
    groups: list[str]
    desktops: dict[str, int]
    unplaceable: str | None  # why no host takes its next desktop, host by host; None while one does


class HostState(StrEnum):
    """Whether a host's hypervisor answered just now (what an admin wants of it is its mode)."""

    ACTIVE = "active"  # answering
    DOWN = "down"  # its hypervisor does not answer


class HostPublic(BaseModel):
    id: int
    name: str
    uri: str
    mode: HostMode  # active: takes new desktops; maintenance: takes none, its idle desktops move away
    state: HostState
    reason: str | None
    capacity: HostCapacity | None  # None unless the host answered just now
    committed_vcpus: int  # what its desktops take, by their pools' sizes
    committed_memory_mib: int
    desktops: dict[str, int]


class DesktopPublic(BaseModel):
    id: int
    name: str
    pool: str
    state: DesktopState
    reason: str | None
    domain: str
    disk_path: str | None
    generation: int
    assigned_to: str | None
    since: datetime


class SessionPublic(BaseModel):
    """A live display session, as the console lists it."""

    id: int
    user: str
    desktop: str
    pool: str
    source: str  # the browser's address as the gateway saw it
    since: datetime
    seen_at: datetime  # the gateway's last heartbeat
    bytes_from_browser: int
    bytes_to_browser: int
    idle_s: float | None  # since the last key or pointer event, at the last heartbeat


def image_view(image: Image) -> ImagePublic:
    return ImagePublic(id=image.id or 0, name=image.name, version=image.version, recipe=image.recipe,
                       sha256=image.sha256, size_bytes=image.size_bytes, deprecated=image.deprecated,
                       built_at=image.built_at, packages=image.manifest.get("packages", {}))


def pool_view(pool: Pool, image: Image | None, desktops: list[Desktop]) -> PoolPublic:
    counts = Counter(str(d.state) for d in desktops)
    return PoolPublic(id=pool.id or 0, name=pool.name,
                      image=f"{image.name}:{image.version}" if image else str(pool.image_id),
                      size=pool.target_size, min_size=pool.min_size, max_size=pool.max_size,
                      memory_mib=pool.memory_mib, vcpus=pool.vcpus, clone=str(pool.clone),
                      memory_sharing=pool.memory_sharing,
                      deleting=pool.deleting, groups=list(pool.groups),
                      desktops=dict(sorted(counts.items())), unplaceable=pool.unplaceable)


def desktop_view(desktop: Desktop, pool: Pool) -> DesktopPublic:
    return DesktopPublic(id=desktop.id or 0, name=desktop.name, pool=pool.name, state=desktop.state,
                         reason=desktop.reason, domain=desktop.name, disk_path=desktop.disk_path,
                         generation=desktop.generation, assigned_to=desktop.assigned_to,
                         since=desktop.state_since)
