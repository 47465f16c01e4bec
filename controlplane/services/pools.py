"""Pools: create, resize, delete. These only change wishes; the reconciler makes them true."""

from __future__ import annotations

import logging

from controlplane.db import audit, images, pools
from controlplane.db import desktops as desktop_repo
from controlplane.db.engine import session_scope
from controlplane.db.models import Pool
from controlplane.domain.groups import InvalidGroup, group_ref
from controlplane.domain.naming import InvalidName, check_name
from controlplane.domain.ports import CloneMode
from controlplane.errors import Conflict, InvalidInput
from controlplane.services.context import Context
from controlplane.services.views import PoolPublic, pool_view

MAX_POOL_SIZE = 500
log = logging.getLogger(__name__)


def check_sizes(*, size: int, min_size: int, max_size: int) -> None:
    for field, value in (("size", size), ("min_size", min_size), ("max_size", max_size)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_POOL_SIZE:
            raise InvalidInput(f"{field}: must be an integer from 0 to {MAX_POOL_SIZE}", field=field)
    if min_size > max_size:
        raise InvalidInput(f"min_size: {min_size} is above max_size {max_size}", field="min_size")
    if not min_size <= size <= max_size:
        raise InvalidInput(f"size: {size} is outside min_size..max_size ({min_size}..{max_size})", field="size")


def check_groups(groups: list[str]) -> list[str]:
    """The entitled groups as canonical references (full DN or SID, see domain/groups.py)."""
    refs = set()
    for i, group in enumerate(groups):
        try:
            refs.add(group_ref(group))
        except InvalidGroup as err:
            raise InvalidInput(f"groups.{i}: {err}", field=f"groups.{i}") from None
    return sorted(refs)


def check_clone(value: str) -> CloneMode:
    try:
        return CloneMode(value)
    except ValueError:
        raise InvalidInput(f"clone: {str(value)[:20]!r} must be one of {', '.join(m.value for m in CloneMode)}",
                           field="clone") from None


def create(ctx: Context, *, name: str, image: str, size: int, min_size: int = 0, max_size: int = 50,
           memory_mib: int | None = None, vcpus: int | None = None, groups: list[str] | None = None,
           clone: str = "instant", memory_sharing: bool = True, actor: str) -> Pool:
    """A pool of SIZE desktops of IMAGE. Memory and vCPUs default to what the image's recipe asks
    for (an agent desktop needs 1 GiB and two vCPUs for Firefox; busybox, 256 MiB and one)."""
    try:
        check_name("name", name)
    except InvalidName as err:
        raise InvalidInput(str(err), field="name") from err
    check_sizes(size=size, min_size=min_size, max_size=max_size)
    mode = check_clone(clone)
    with session_scope(ctx.engine) as session:
        if pools.get_by_name(session=session, name=name) is not None:
            raise Conflict(f"name: pool {name!r} already exists", field="name")
        img = images.resolve(session=session, ref=image)
        memory_mib, vcpus = shape_of(img.manifest, memory_mib, vcpus)
        pool = pools.create(session=session, pool=Pool(
            name=name, image_id=img.id or 0, target_size=size, min_size=min_size, max_size=max_size,
            memory_mib=memory_mib, vcpus=vcpus, clone=mode, memory_sharing=bool(memory_sharing),
            groups=check_groups(groups or []),
            created_at=ctx.clock.now()))
        audit.append(session=session, actor=actor, action="pool.create", target=name,
                     image=f"{img.name}:{img.version}", size=size, min_size=min_size, max_size=max_size,
                     groups=pool.groups, clone=mode.value, memory_sharing=pool.memory_sharing)
        return pool


def shape_of(manifest: dict, memory_mib: int | None, vcpus: int | None) -> tuple[int, int]:
    """Memory and vCPUs per desktop: as given, else the image manifest's, else 256 MiB and one;
    InvalidInput naming the field when out of range."""
    memory_mib = memory_mib if memory_mib is not None else int(manifest.get("memory_mib", 256))
    vcpus = vcpus if vcpus is not None else int(manifest.get("vcpus", 1))
    if not 128 <= memory_mib <= 65536:
        raise InvalidInput("memory_mib: must be from 128 to 65536", field="memory_mib")
    if not 1 <= vcpus <= 16:
        raise InvalidInput("vcpus: must be from 1 to 16", field="vcpus")
    return memory_mib, vcpus


def list_all(ctx: Context) -> list[Pool]:
    with session_scope(ctx.engine) as session:
        return pools.list_all(session=session)


def get(ctx: Context, name: str) -> Pool:
    with session_scope(ctx.engine) as session:
        return pools.get_or_raise(session=session, name=name)


def scale(ctx: Context, name: str, size: int, *, actor: str, min_size: int | None = None,
          max_size: int | None = None) -> Pool:
    with session_scope(ctx.engine) as session:
        pool = pools.get_or_raise(session=session, name=name)
        if pool.deleting:
            raise Conflict(f"pool {name!r} is being deleted", field="pool")
        lo = pool.min_size if min_size is None else min_size
        hi = pool.max_size if max_size is None else max_size
        check_sizes(size=size, min_size=lo, max_size=hi)
        before = pool.target_size
        pool.target_size, pool.min_size, pool.max_size = size, lo, hi
        session.add(pool)
        audit.append(session=session, actor=actor, action="pool.scale", target=name,
                     before=before, after=size, min_size=lo, max_size=hi)
        return pool


def update(ctx: Context, name: str, *, size: int | None, min_size: int | None, max_size: int | None,
           groups: list[str] | None, actor: str, clone: str | None = None, image: str | None = None) -> Pool:
    """PATCH semantics: size/limits through `scale`, entitlements, clone mode and image replaced when
    given. A new clone mode or image applies to desktops made from now on (and a new template is
    made for them); existing desktops are left as they are until they are recycled or rebuilt."""
    checked = check_groups(groups) if groups is not None else None
    mode = check_clone(clone) if clone is not None else None
    pool = get(ctx, name)
    if size is not None or min_size is not None or max_size is not None:
        pool = scale(ctx, name, pool.target_size if size is None else size, min_size=min_size,
                     max_size=max_size, actor=actor)
    if checked is not None:
        with session_scope(ctx.engine) as session:
            pool = pools.get_or_raise(session=session, name=name)
            before, pool.groups = pool.groups, checked
            session.add(pool)
            audit.append(session=session, actor=actor, action="pool.entitle", target=name, before=before,
                         after=checked)
    if image is not None:
        with session_scope(ctx.engine) as session:
            pool = pools.get_or_raise(session=session, name=name)
            img = images.resolve(session=session, ref=image)
            if pool.image_id != img.id:
                old = images.get(session=session, image_id=pool.image_id)
                audit.append(session=session, actor=actor, action="pool.image", target=name,
                             before=f"{old.name}:{old.version}" if old else str(pool.image_id),
                             after=f"{img.name}:{img.version}")
                pool.image_id = img.id or 0
                session.add(pool)
    if mode is not None:
        with session_scope(ctx.engine) as session:
            pool = pools.get_or_raise(session=session, name=name)
            if pool.clone != mode:
                audit.append(session=session, actor=actor, action="pool.clone_mode", target=name,
                             before=str(pool.clone), after=mode.value)
                pool.clone = mode
                session.add(pool)
    return pool


def replace(ctx: Context, name: str, *, image: str, size: int, min_size: int, max_size: int, memory_mib: int,
            vcpus: int, groups: list[str], clone: str, memory_sharing: bool, actor: str) -> Pool:
    """PUT semantics, for declarative clients (Terraform): every field given, all checked before
    anything changes. What the desktops are made of (memory, vCPUs, memory sharing) cannot change
    in place: that is a new pool. A new image applies to desktops made from now on (`update`)."""
    pool = get(ctx, name)
    for field, want in (("memory_mib", memory_mib), ("vcpus", vcpus), ("memory_sharing", memory_sharing)):
        if getattr(pool, field) != want:
            raise Conflict(f"{field}: pool {name!r} has {getattr(pool, field)}, which cannot change in place; "
                           "create a new pool", field=field)
    check_sizes(size=size, min_size=min_size, max_size=max_size)
    with session_scope(ctx.engine) as session:
        images.resolve(session=session, ref=image)  # refuse an unknown image before any change
    return update(ctx, name, size=size, min_size=min_size, max_size=max_size, groups=groups, clone=clone,
                  image=image, actor=actor)


def delete(ctx: Context, name: str, *, actor: str) -> Pool:
    """Mark the pool for deletion; the reconciler removes its desktops, then the pool."""
    with session_scope(ctx.engine) as session:
        pool = pools.get_or_raise(session=session, name=name)
        if not pool.deleting:
            pool.deleting = True
            session.add(pool)
            audit.append(session=session, actor=actor, action="pool.delete", target=name)
        return pool


def note_unplaceable(ctx: Context, why: dict[int, str]) -> None:
    """Keep on each pool why no host takes its next desktop (WHY: pool id -> reason), or clear it.
    A pool that becomes unplaceable is logged and audited once, not at every pass."""
    with session_scope(ctx.engine) as session:
        for pool in pools.list_all(session=session):
            reason = why.get(pool.id or 0)
            if pool.unplaceable == reason:
                continue
            if reason is not None and pool.unplaceable is None:
                log.warning("%s", reason)
                audit.append(session=session, actor="reconciler", action="pool.unplaceable", target=pool.name,
                             reason=reason[:1000])
            pool.unplaceable = reason
            session.add(pool)


def views(ctx: Context, name: str | None = None) -> list[PoolPublic]:
    """Public views with desktop counts by state (for the API and `pool ls`)."""
    with session_scope(ctx.engine) as session:
        rows = [pools.get_or_raise(session=session, name=name)] if name else pools.list_all(session=session)
        return [pool_view(p, images.get(session=session, image_id=p.image_id),
                          desktop_repo.list_all(session=session, pool_id=p.id)) for p in rows]
