"""One look at the world for a reconcile pass: the database's pools and desktops, and every host.

A pass plans its templates and its desktops, and sends app allowlists, from the same look, so each
host's domains are read once per pass and each desktop row once (as plain columns: a pass over
10,000 desktops must not build an ORM object for each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from controlplane.db import desktops, images, pools
from controlplane.db.engine import session_scope
from controlplane.domain.planning import DesktopView, HostView, PoolView
from controlplane.domain.ports import CloneMode, TemplateKey
from controlplane.services import apps, hosts, policies, templates
from controlplane.services.context import Context

T = TypeVar("T")
R = TypeVar("R")
Mapper = Callable[[Callable[[T], R], Iterable[T]], Iterator[R]]


@dataclass(frozen=True)
class Observation:
    pools: list[PoolView]
    desktops: list[DesktopView]
    hosts: list[hosts.ObservedHost]
    images_in_use: Mapping[int, frozenset[int]] = field(default_factory=dict)  # host id: its desktops' images
    occupancy: list[policies.Occupancy] = field(default_factory=list)  # who is on each desktop whose guest may run

    @property
    def host_views(self) -> list[HostView]:
        return [h.view for h in self.hosts]

    @property
    def wanted_templates(self) -> frozenset[TemplateKey]:
        """The templates instant-clone pools clone from (a pool being deleted wants none)."""
        return frozenset(p.template for p in self.pools if p.template is not None and not p.deleting)

    @property
    def answering(self) -> bool:
        """Whether any host answered (with none, nothing can be done this pass)."""
        return any(h.view.domains is not None for h in self.hosts)


def observe(ctx: Context, mapper: Mapper = map) -> Observation:
    """The database, then every host through MAPPER (the reconciler's worker pool: a host that
    died holds its calls until keepalive gives up, about 15 s, and must not hold the others')."""
    rules = policies.active(ctx)
    with session_scope(ctx.engine) as session:
        disks = {i.id: i.sha256 for i in images.list_all(session=session)}
        pool_views = [PoolView(id=p.id or 0, name=p.name, target=p.target_size, min_size=p.min_size,
                               max_size=p.max_size, deleting=p.deleting, memory_mib=p.memory_mib, vcpus=p.vcpus,
                               template=templates.key_of(p, rules) if p.clone == CloneMode.INSTANT else None,
                               image=disks.get(p.image_id))
                      for p in pools.list_all(session=session)]
        rows = desktops.planning_rows(session=session)
        registered = hosts.registered(session)
    in_use: dict[int, set[int]] = {}
    desktop_views, occupancy = [], []
    pool_names = {p.id: p.name for p in pool_views}
    for d in rows:
        in_use.setdefault(d.host_id, set()).add(d.image_id)
        desktop_views.append(DesktopView(id=d.id, name=d.name, pool_id=d.pool_id, state=d.state, since=d.state_since,
                                         host_id=d.host_id, generation=d.generation, grace_until=d.grace_until,
                                         retry_at=d.retry_at))
        if d.state in apps.DELIVER_TO and d.pool_id in pool_names:  # a pool made since it was read: next pass
            groups = frozenset(d.assigned_groups) if d.assigned_groups is not None else None
            occupancy.append(policies.Occupancy(d.name, pool_names[d.pool_id], d.assigned_to, groups, d.ipv4,
                                                d.host_id))
    seen = list(mapper(lambda host: hosts.observe(ctx, host), registered))
    return Observation(pool_views, desktop_views, seen, {h: frozenset(i) for h, i in in_use.items()}, occupancy)
