"""Display sessions: what holds a desktop for its agent, what ends a session, and the audit log of
each (start, end or drop with reason and bytes each way, and what the filter dropped, tallied).

A desktop is held while any display session on it sends heartbeats (its `grace_until` is pushed
forward every watchdog period); when the last one ends, the disconnect grace starts, after which
the reconciler recycles the desktop. A gateway that dies simply stops pushing: the same grace."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session

from controlplane.db import audit, desktops, display_sessions, pools
from controlplane.db import sessions as api_sessions
from controlplane.db.engine import session_scope
from controlplane.db.models import DisplaySession, Pool
from controlplane.domain.desktop import DesktopState
from controlplane.domain.planning import HOST_FAILED, QUARANTINE
from controlplane.domain.policy import Policy, effective
from controlplane.domain.ports import Identity
from controlplane.domain.rfb.stream import Event
from controlplane.domain.session import NEEDS_SIGN_IN, EndReason
from controlplane.errors import Conflict, TemporaryError
from controlplane.services import identity, policies, rollouts
from controlplane.services.context import Context
from controlplane.services.views import SessionPublic


@dataclass(frozen=True)
class Limits:
    idle_s: float
    max_s: float
    grace_s: float
    start_page: str | None = None  # what the browser shows when the desktop is handed to the agent


def limits_in(session: Session, *, groups: frozenset[str], pool: str) -> Limits:
    """The session rules of an agent in GROUPS on a desktop of POOL, from the effective policy
    read in SESSION's transaction (a connect's and a gateway admission's)."""
    return _limits(policies.active_in(session), groups, pool)


def _limits(rules_in_force: list[Policy], groups: frozenset[str], pool: str) -> Limits:
    eff = effective(rules_in_force, groups, pool)
    rules = eff.session
    return Limits(idle_s=rules.idle_timeout_minutes * 60.0, max_s=rules.max_session_hours * 3600.0,
                  grace_s=rules.disconnect_grace_minutes * 60.0, start_page=eff.start_page)


@dataclass(frozen=True)
class Display:
    """One open display session as the gateway knows it."""

    id: int
    desktop_id: int
    user: str
    jti: str  # the sign-in (API session) that opened it
    source: str = "?"
    gateway: str = "?"
    started_at: datetime | None = None


def _stale_after(period_s: float) -> timedelta:
    """A session whose gateway missed three heartbeats is gone (its gateway died)."""
    return timedelta(seconds=3 * period_s)


LEASE_FLOOR_S = 60.0  # a live session's hold never depends on a short (or zero) grace alone


def _lease(limits: Limits, period_s: float) -> timedelta:
    """How long a desktop stays safe from recycling after its gateway's last heartbeat: a gateway
    that dies mid-session gives the agent the same grace as a dropped connection, and at least a
    minute, so late heartbeats (a busy host) never let the reconciler take a live desktop."""
    return timedelta(seconds=max(limits.grace_s, LEASE_FLOOR_S)) + _stale_after(period_s)


def live_count(ctx: Context, period_s: float) -> int:
    """Display sessions live now on any desktop, by the rule that holds desktops: a heartbeat
    within three of their gateway's periods."""
    with session_scope(ctx.engine) as session:
        return display_sessions.count_all_fresh(session=session, since=ctx.clock.now() - _stale_after(period_s))


def live(ctx: Context, period_s: float) -> list[SessionPublic]:
    """The live display sessions (by the same rule as live_count), oldest first."""
    with session_scope(ctx.engine) as session:
        out = []
        for r in display_sessions.list_fresh(session=session, since=ctx.clock.now() - _stale_after(period_s)):
            desktop = desktops.get(session=session, desktop_id=r.desktop_id)
            pool = session.get(Pool, desktop.pool_id) if desktop is not None else None
            out.append(SessionPublic(
                id=r.id or 0, user=r.username, desktop=desktop.name if desktop else "?",
                pool=pool.name if pool else "?", source=r.source, since=r.started_at, seen_at=r.seen_at,
                bytes_from_browser=r.bytes_from_browser, bytes_to_browser=r.bytes_to_browser,
                idle_s=None if r.input_at is None else max(0.0, (r.seen_at - r.input_at).total_seconds())))
        return out


class CapReached(Conflict):
    """The agent already has as many live display sessions as one agent may (on any replica)."""


def open_display(ctx: Context, *, desktop_id: int, user: str, jti: str, source: str, gateway: str,
                 limits: Limits, period_s: float, cap: int | None = None) -> Display:
    """A display session is open: the desktop is held for as long as its heartbeats continue.

    CapReached, and nothing written, when USER already has CAP live sessions on any gateway of
    any replica (the rows are the count, so every replica sees the others' sessions; the user's
    lock makes the count and the insert one step, so two replicas at once cannot both pass)."""
    with session_scope(ctx.engine) as session:
        return open_display_in(session, ctx.clock.now(), desktop_id=desktop_id, user=user, jti=jti, source=source,
                               gateway=gateway, limits=limits, period_s=period_s, cap=cap)


def open_display_in(session: Session, now: datetime, *, desktop_id: int, user: str, jti: str, source: str,
                    gateway: str, limits: Limits, period_s: float, cap: int | None = None) -> Display:
    """`open_display` in SESSION's transaction (the gateway's admission). CapReached is raised
    before this writes anything but the sweep of other gateways' stale rows."""
    display_sessions.remove_stale(session=session, before=now - _stale_after(period_s))
    display_sessions.lock_user(session=session, user=user)
    if cap is not None and display_sessions.count_user(session=session, user=user) >= cap:
        raise CapReached(f"user: {user} already has {cap} live display sessions (the most one agent may have)",
                         field="user")
    row = display_sessions.create(session=session, row=DisplaySession(
        desktop_id=desktop_id, username=user, source=source, gateway=gateway, started_at=now, seen_at=now))
    desktop = desktops.get(session=session, desktop_id=desktop_id)
    if desktop is not None:  # a new sign-in opened it: an earlier admin disconnect is done with
        desktop.grace_until, desktop.disconnect_requested = now + _lease(limits, period_s), False
        session.add(desktop)
    audit.append(session=session, actor=user, action="session.start", target=desktop.name if desktop else "?",
                 source=source, display=row.id)
    return Display(id=row.id or 0, desktop_id=desktop_id, user=user, jti=jti, source=source, gateway=gateway,
                   started_at=now)


@dataclass(frozen=True)
class Usage:
    """What the gateway saw of a session so far (shown in the console)."""

    bytes_from_browser: int
    bytes_to_browser: int
    idle_s: float  # since the last key or pointer event


def heartbeat(ctx: Context, display: Display, *, limits: Limits, period_s: float,
              usage: Usage | None = None) -> EndReason | None:
    """Every watchdog period: refresh the session and the desktop's hold, and say whether a rule
    now ends it (the desktop's guest was quarantined, the desktop was taken away, an admin asked,
    the shift's log-off time came, or the sign-in that opened it was revoked)."""
    now = ctx.clock.now()
    seen = None if usage is None else {"bytes_from_browser": usage.bytes_from_browser,
                                       "bytes_to_browser": usage.bytes_to_browser,
                                       "input_at": now - timedelta(seconds=usage.idle_s)}
    with session_scope(ctx.engine) as session:
        if not display_sessions.touch(session=session, display_id=display.id, now=now, usage=seen):  # swept: back
            display_sessions.create(session=session, row=DisplaySession(
                id=display.id, desktop_id=display.desktop_id, username=display.user, source=display.source,
                gateway=display.gateway, started_at=display.started_at or now, seen_at=now))
        row = desktops.get(session=session, desktop_id=display.desktop_id)
        if row is not None and row.state == DesktopState.DELETING and (row.reason or "").startswith(QUARANTINE):
            return EndReason.QUARANTINED  # the agent is told why, and gets a fresh desktop on reconnect
        if row is not None and row.state == DesktopState.DELETING and (row.reason or "").startswith(HOST_FAILED):
            return EndReason.HOST_FAILED
        if row is None or row.assigned_to != display.user or row.state not in (DesktopState.IN_USE,
                                                                                 DesktopState.DRAINING):
            return EndReason.TAKEN_AWAY
        row.grace_until = now + _lease(limits, period_s)
        session.add(row)
        if row.disconnect_requested:
            return EndReason.ADMIN
        if row.logoff_at is not None and row.logoff_at <= now:
            return EndReason.SHIFT_OVER
        sign_in = api_sessions.get(session=session, jti=display.jti)
        if sign_in is None or sign_in.revoked_at is not None:
            return EndReason.SIGN_IN_REVOKED
    return None


@dataclass(frozen=True)
class DirectorySays:
    """What the directory said of a user: nothing (KNOWN false: there is none, or it did not
    answer), or their entry (None: no such user)."""

    known: bool
    entry: Identity | None = None


def ask_directory(ctx: Context, user: str) -> DirectorySays:
    """The directory's entry for USER now, asked before any transaction is open (a slow directory
    then holds no database connection). One that cannot be reached says nothing."""
    if ctx.directory is None:
        return DirectorySays(known=False)
    try:
        return DirectorySays(known=True, entry=ctx.directory.lookup(user))
    except TemporaryError:
        return DirectorySays(known=False)


def standing(ctx: Context, *, user: str, pool: str) -> EndReason | None:
    """What the directory says of USER now: None while they are enabled and entitled to POOL.
    A directory that cannot be reached says nothing (sessions go on while AD is down)."""
    said = ask_directory(ctx, user)
    if not said.known:
        return None
    with session_scope(ctx.engine) as session:
        return standing_among(said, pools.list_all(session=session), pool)


def standing_among(said: DirectorySays, every: list[Pool], pool: str) -> EndReason | None:
    """What SAID means for the user on POOL, among EVERY pool (read by the caller): None while
    they are enabled and entitled to it (or the directory said nothing: sessions go on while AD
    is down)."""
    if not said.known:
        return None
    if said.entry is None or not said.entry.enabled:
        return EndReason.ACCOUNT_DISABLED
    if not any(p.name == pool for p in identity.entitled_among(every, said.entry.groups)):
        return EndReason.NOT_ENTITLED
    return None


def close_display(ctx: Context, display: Display, *, desktop: str, reason: str, bytes_in: int, bytes_out: int,
                  events: list[Event], limits: Limits, period_s: float) -> None:
    """The session ended: audit it (with what the filter dropped, one row per kind) and, if no other
    session is live on the desktop, start the disconnect grace. One transaction, so a second tab
    or a half-open socket ending never recycles a desktop someone is working in."""
    now = ctx.clock.now()
    with session_scope(ctx.engine) as session:
        display_sessions.remove(session=session, display_id=display.id)  # first: takes SQLite's write lock
        row = desktops.lock(session=session, desktop_id=display.desktop_id)
        fresh = display_sessions.count_fresh(session=session, desktop_id=display.desktop_id,
                                             since=now - _stale_after(period_s))
        if row is not None and row.assigned_to == display.user and not fresh and reason != EndReason.SHUTDOWN:
            # (a shutdown keeps the heartbeat's hold: the agent comes back to a restarted control plane)
            over = row.state == DesktopState.DRAINING or (row.logoff_at is not None and row.logoff_at <= now)
            row.grace_until = now + timedelta(seconds=0 if over else limits.grace_s)  # shift over: no coming back
            row.disconnect_requested = False  # honoured: the next sign-in may connect again
            session.add(row)
        for event in events:
            audit.append(session=session, actor=display.user, action=f"session.{event.kind}", target=desktop,
                         **event.summary())
        ended = reason in {r.value for r in EndReason} and EndReason(reason).clean
        if row is not None:
            rollouts.note_session_end(session, row, dropped=_desktop_side(reason),
                                      lasted_s=(now - (display.started_at or now)).total_seconds())
        audit.append(session=session, actor=display.user, action="session.end" if ended else "session.drop",
                     target=desktop, reason=reason, bytes_from_browser=bytes_in, bytes_to_browser=bytes_out,
                     display=display.id)
        if reason in NEEDS_SIGN_IN and not (reason == EndReason.IDLE and fresh):  # an idle 2nd tab: no
            revoked = api_sessions.revoke_user(session=session, username=display.user, now=now)
            audit.append(session=session, actor="gateway", action="auth.revoke", target=display.user,
                         sessions=revoked, reason=reason)


def _desktop_side(reason: str) -> bool:
    """The session ended because of the desktop (it closed, failed a security check, or the relay
    broke), not because of its agent, a rule, an admin or a control-plane restart."""
    known = {r.value for r in EndReason}
    return reason not in known or reason in (EndReason.DESKTOP_CLOSED, EndReason.QUARANTINED, EndReason.HOST_FAILED)


def request_disconnect(ctx: Context, desktop_name: str, *, actor: str) -> None:
    """An admin ends the live sessions on a desktop: the gateways serving them notice within a
    watchdog period, and the agent's sign-ins are revoked so the portal cannot resume by itself."""
    with session_scope(ctx.engine) as session:
        row = desktops.get_or_raise(session=session, name=desktop_name)
        row.disconnect_requested = True
        session.add(row)
        audit.append(session=session, actor=actor, action="session.force_disconnect", target=desktop_name,
                     user=row.assigned_to)
        if row.assigned_to is not None:
            api_sessions.revoke_user(session=session, username=row.assigned_to, now=ctx.clock.now())


def refused(ctx: Context, *, user: str, reason: str, source: str) -> None:
    with session_scope(ctx.engine) as session:
        refused_in(session, user=user, reason=reason, source=source)


def refused_in(session: Session, *, user: str, reason: str, source: str) -> None:
    """A session the gateway turned away, audited in SESSION's transaction."""
    audit.append(session=session, actor=user, action="session.refused", target="?", reason=reason, source=source)


def my_desktop(ctx: Context, *, user: str, pool: str) -> dict[str, Any]:
    """What the portal may know of the agent's own desktop in POOL: its name and any log-off time."""
    with session_scope(ctx.engine) as session:
        for row in desktops.list_all(session=session):
            if row.assigned_to == user:
                pool_row = session.get(Pool, row.pool_id)
                if pool_row is not None and pool_row.name == pool:
                    return {"desktop": row.name, "logoff_at": row.logoff_at}
    return {"desktop": None, "logoff_at": None}
