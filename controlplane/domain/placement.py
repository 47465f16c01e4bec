"""Placement: which host takes a pool's next desktop. Filters first, then weights (as Nova does).

Every filter that turns a host down says why, in words an admin can act on, so a desktop that
no host can take is explained host by host ("host-b: in maintenance; host-c: memory: 31.5 of 32
GiB committed, 1 GiB more needed"), never as "no resources". Among the hosts that pass, the
weights prefer, in this order:

1. the host with the fewest desktops of this pool (spread: a host's failure takes the fewest of a
   pool's desktops with it, and an agent's next desktop is likely on another host; this is the
   pool's anti-affinity, soft so that a pool larger than the host count still grows);
2. a host that already has the pool's instant-clone template saved (a clone there takes a second;
   elsewhere a template boots first);
3. the host with the most memory left;
4. the lowest host id, so equal hosts are chosen the same way on every pass.

Capacity is what the host's hypervisor reports, times an overcommit ratio: desktops are mostly
idle (an agent types, a browser waits), and instant clones of one template share much of their
memory when the pool allows it (KSM). What is committed is what desktops of the host are given
(their pools' memory and vCPUs), not what they use now: a desktop may use all of it at any time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from controlplane.domain.ports import HostCapacity, TemplateKey

MIB = 1 << 20


class HostMode(StrEnum):
    """What an admin wants of a host."""

    ACTIVE = "active"  # takes new desktops
    MAINTENANCE = "maintenance"  # takes none; its idle desktops move away, sessions end first


@dataclass(frozen=True)
class Ratios:
    """How far a host's desktops may commit more than it has (Nova's allocation ratios)."""

    cpu: float = 8.0
    memory: float = 1.5
    disk_reserve_bytes: int = 2 << 30  # never fill a host's storage: overlays grow as guests write


@dataclass(frozen=True)
class HostLoad:
    """One host as placement sees it: what it has, what its desktops are given, what it holds."""

    id: int
    name: str
    mode: HostMode = HostMode.ACTIVE
    capacity: HostCapacity | None = None  # None: not reachable now
    down_reason: str | None = None  # why it is not reachable
    committed_vcpus: int = 0
    committed_memory_mib: int = 0
    pool_desktops: Mapping[int, int] = field(default_factory=dict)  # pool id -> its desktops here
    templates: frozenset[TemplateKey] = frozenset()  # saved instant-clone templates
    images: frozenset[str] | None = None  # sha256 of the golden images it has (None: not known)


@dataclass(frozen=True)
class Shape:
    """What one more desktop of a pool needs."""

    pool_id: int
    pool: str
    memory_mib: int
    vcpus: int
    template: TemplateKey | None = None  # its pool clones from this template
    image: str | None = None  # its pool's golden image (sha256 of its disk)


@dataclass(frozen=True)
class Unplaceable:
    """No host can take a desktop of SHAPE, and why, host by host."""

    shape: Shape
    refusals: tuple[tuple[str, str], ...]  # (host name, reason)

    def __str__(self) -> str:
        need = f"{self.shape.memory_mib} MiB, {self.shape.vcpus} vCPU"
        if not self.refusals:
            return f"pool {self.shape.pool}: no host is registered to take a desktop ({need})"
        why = "; ".join(f"{host}: {reason}" for host, reason in self.refusals)
        return f"pool {self.shape.pool}: no host can take a desktop ({need}): {why}"


def refusal(host: HostLoad, shape: Shape, ratios: Ratios = Ratios()) -> str | None:
    """Why HOST cannot take one more desktop of SHAPE, or None if it can."""
    if host.mode == HostMode.MAINTENANCE:
        return "in maintenance"
    if host.capacity is None:
        return f"down ({host.down_reason})" if host.down_reason else "down"
    if shape.image is not None and host.images is not None and shape.image not in host.images:
        return f"image: the pool's golden image (sha256 {shape.image[:12]}) is not in this host's image store"
    cap = host.capacity
    memory = int(cap.memory_mib * ratios.memory)
    if host.committed_memory_mib + shape.memory_mib > memory:
        return (f"memory: {host.committed_memory_mib} of {memory} MiB committed ({cap.memory_mib} MiB x "
                f"{ratios.memory:g}), {shape.memory_mib} MiB more needed")
    vcpus = int(cap.vcpus * ratios.cpu)
    if host.committed_vcpus + shape.vcpus > vcpus:
        return (f"vCPUs: {host.committed_vcpus} of {vcpus} committed ({cap.vcpus} x {ratios.cpu:g}), "
                f"{shape.vcpus} more needed")
    if cap.disk_free_bytes < ratios.disk_reserve_bytes:
        return (f"disk: {cap.disk_free_bytes // MIB} MiB free, {ratios.disk_reserve_bytes // MIB} MiB kept in "
                f"reserve")
    return None


def place(shape: Shape, hosts: Sequence[HostLoad], ratios: Ratios = Ratios()) -> HostLoad | Unplaceable:
    """The host that takes one more desktop of SHAPE, or why none can. Pure and deterministic."""
    refusals: list[tuple[str, str]] = []
    fit: list[HostLoad] = []
    for host in sorted(hosts, key=lambda h: h.id):
        reason = refusal(host, shape, ratios)
        if reason is None:
            fit.append(host)
        else:
            refusals.append((host.name, reason))
    if not fit:
        return Unplaceable(shape, tuple(refusals))
    return min(fit, key=lambda h: _weight(h, shape, ratios))


def _weight(host: HostLoad, shape: Shape, ratios: Ratios) -> tuple[int, int, int, int]:
    assert host.capacity is not None
    memory_left = int(host.capacity.memory_mib * ratios.memory) - host.committed_memory_mib
    has_template = shape.template is not None and shape.template in host.templates
    return (host.pool_desktops.get(shape.pool_id, 0), 0 if has_template else 1, -memory_left, host.id)


def taken(host: HostLoad, shape: Shape) -> HostLoad:
    """HOST once it has one more desktop of SHAPE: several placements in one pass see each other."""
    per_pool = dict(host.pool_desktops)
    per_pool[shape.pool_id] = per_pool.get(shape.pool_id, 0) + 1
    return replace(host, committed_vcpus=host.committed_vcpus + shape.vcpus,
                   committed_memory_mib=host.committed_memory_mib + shape.memory_mib, pool_desktops=per_pool)
