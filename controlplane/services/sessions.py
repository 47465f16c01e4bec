"""Display sessions in the audit log: start, end or drop, with reason and bytes each way, and
every filter event (clipboard dropped, encodings stripped, alerts)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from controlplane.db import audit, desktops
from controlplane.db.engine import session_scope
from controlplane.db.models import Pool
from controlplane.domain.desktop import DesktopState
from controlplane.services import policies
from controlplane.services.context import Context


@dataclass(frozen=True)
class Limits:
    idle_s: float
    max_s: float
    grace_s: float


def limits_for(ctx: Context, *, user: str, groups: frozenset[str], pool: str) -> Limits:
    """The session rules of USER on a desktop of POOL, from the effective policy."""
    session = policies.effective_for(ctx, user, groups, pool)["session"]
    return Limits(idle_s=session["idle_timeout_minutes"] * 60.0, max_s=session["max_session_hours"] * 3600.0,
                  grace_s=session["disconnect_grace_minutes"] * 60.0)


def mark_live(ctx: Context, desktop_id: int) -> None:
    """A display session is open: no grace clock, no pending disconnect."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=desktop_id)
        if row is not None:
            row.grace_until, row.disconnect_requested = None, False
            session.add(row)


def start_grace(ctx: Context, desktop_id: int, grace_s: float) -> None:
    """No display session: the agent may come back to the same desktop until the grace ends,
    after which the reconciler recycles it (never handing one agent's desktop to another)."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=desktop_id)
        if row is not None and row.assigned_to is not None:
            now = ctx.clock.now()
            over = row.state == DesktopState.DRAINING or (row.logoff_at is not None and row.logoff_at <= now)
            row.grace_until = now + timedelta(seconds=0 if over else grace_s)  # shift over: no coming back
            session.add(row)


def disconnect_requested(ctx: Context, desktop_id: int) -> bool:
    """An admin asked, the desktop was taken away, or a ramp-down's log-off time has come."""
    with session_scope(ctx.engine) as session:
        row = desktops.get(session=session, desktop_id=desktop_id)
        if row is None or row.disconnect_requested or row.assigned_to is None:
            return True
        return row.logoff_at is not None and row.logoff_at <= ctx.clock.now()


def request_disconnect(ctx: Context, desktop_name: str, *, actor: str) -> None:
    """An admin ends a live session; the gateway serving it notices within seconds."""
    with session_scope(ctx.engine) as session:
        row = desktops.get_or_raise(session=session, name=desktop_name)
        row.disconnect_requested = True
        session.add(row)
        audit.append(session=session, actor=actor, action="session.force_disconnect", target=desktop_name,
                     user=row.assigned_to)


def started(ctx: Context, *, user: str, desktop: str, source: str) -> None:
    _append(ctx, user, "session.start", desktop, source=source)


def ended(ctx: Context, *, user: str, desktop: str, reason: str, bytes_in: int, bytes_out: int) -> None:
    clean = reason in ("browser closed", "idle timeout", "desktop closed", "maximum session length",
                       "disconnected by an admin")
    _append(ctx, user, "session.end" if clean else "session.drop", desktop, reason=reason,
            bytes_from_browser=bytes_in, bytes_to_browser=bytes_out)


def filter_event(ctx: Context, *, user: str, desktop: str, kind: str, detail: dict[str, Any]) -> None:
    _append(ctx, user, f"session.{kind}", desktop, **detail)


def refused(ctx: Context, *, user: str, reason: str, source: str) -> None:
    _append(ctx, user, "session.refused", "?", reason=reason, source=source)


def _append(ctx: Context, actor: str, action: str, target: str, **detail: Any) -> None:
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=actor, action=action, target=target, **detail)


def my_desktop(ctx: Context, *, user: str, pool: str) -> dict[str, Any]:
    """What the portal may know of the agent's own desktop in POOL: its name and any log-off time."""
    with session_scope(ctx.engine) as session:
        for row in desktops.list_all(session=session):
            if row.assigned_to == user:
                pool_row = session.get(Pool, row.pool_id)
                if pool_row is not None and pool_row.name == pool:
                    return {"desktop": row.name, "logoff_at": row.logoff_at}
    return {"desktop": None, "logoff_at": None}
