"""Desktop actions admins take: list, reboot, rebuild from the pool's image, recycle."""

from __future__ import annotations

from controlplane.db import audit, desktops, pools
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain.desktop import DesktopState
from controlplane.errors import Conflict
from controlplane.services.context import Context

S = DesktopState


def list_all(ctx: Context, pool: str | None = None) -> list[tuple[Desktop, Pool]]:
    with session_scope(ctx.engine) as session:
        pool_id = pools.get_or_raise(session=session, name=pool).id if pool else None
        return desktops.list_with_pool(session=session, pool_id=pool_id)


def get(ctx: Context, name: str) -> tuple[Desktop, Pool]:
    with session_scope(ctx.engine) as session:
        desktop = desktops.get_or_raise(session=session, name=name)
        pool = session.get(Pool, desktop.pool_id)
        assert pool is not None
        return desktop, pool


def _refuse_in_session(desktop: Desktop, verb: str) -> None:
    if desktop.state in (S.IN_USE, S.DRAINING):
        raise Conflict(f"desktop {desktop.name!r} has an agent session; {verb} refused", field="desktop")
    if desktop.state == S.DELETING:
        raise Conflict(f"desktop {desktop.name!r} is being deleted", field="desktop")


def reboot(ctx: Context, name: str, *, actor: str) -> Desktop:
    """Hard reset; the desktop is handed out again only after it signals ready."""
    with session_scope(ctx.engine) as session:
        desktop = desktops.get_or_raise(session=session, name=name)
        _refuse_in_session(desktop, "reboot")
        audit.append(session=session, actor=actor, action="desktop.reboot", target=name)
        host_id = desktop.host_id
    ctx.driver(host_id).reboot(name)
    with session_scope(ctx.engine) as session:
        desktop = desktops.get_or_raise(session=session, name=name)
        if desktop.state == S.READY:
            desktops.set_state(session=session, desktop=desktop, state=S.PROVISIONING, now=ctx.clock.now(),
                               reason="reboot")
        return desktop


def rebuild(ctx: Context, name: str, *, actor: str) -> Desktop:
    """Throw the overlay away and clone again from the pool's current image.

    Only the row changes here (new generation, state provisioning); the reconciler sees a
    domain of an older generation and recreates it, so a crash anywhere loses nothing.
    """
    with session_scope(ctx.engine) as session:
        desktop = desktops.get_or_raise(session=session, name=name)
        _refuse_in_session(desktop, "rebuild")
        pool = session.get(Pool, desktop.pool_id)
        assert pool is not None
        desktops.mark_rebuild(session=session, desktop=desktop, image_id=pool.image_id, now=ctx.clock.now(),
                              reason="rebuild")
        audit.append(session=session, actor=actor, action="desktop.rebuild", target=name,
                     generation=desktop.generation, image_id=pool.image_id)
        return desktop


def delete(ctx: Context, name: str, *, actor: str) -> Desktop:
    """Recycle: the desktop is removed and, while the pool's size says so, replaced by a fresh one."""
    with session_scope(ctx.engine) as session:
        desktop = desktops.get_or_raise(session=session, name=name)
        _refuse_in_session(desktop, "delete")
        desktops.set_state(session=session, desktop=desktop, state=S.DELETING, now=ctx.clock.now())
        audit.append(session=session, actor=actor, action="desktop.delete", target=name)
        return desktop


def screenshot(ctx: Context, name: str, *, actor: str) -> bytes:
    """A small PNG of the desktop's screen now. It may show an agent's customer: every look is
    audited, with who looked and whose desktop it was."""
    row, _ = get(ctx, name)
    if row.state not in (DesktopState.READY, DesktopState.IN_USE, DesktopState.DRAINING):
        raise Conflict(f"desktop {name!r} is {row.state}: no screen to show", field="desktop")
    png = ctx.driver(row.host_id).screenshot(name)
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=actor, action="desktop.screenshot", target=name, user=row.assigned_to)
    return png
