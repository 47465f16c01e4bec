"""The broker: an entitled agent clicks Connect and gets a desktop and a connect ticket.

The same agent gets the same desktop again on reconnect; two agents never get the same one (the
claim is one atomic UPDATE). The ticket is 256 bits from `secrets`, single use, valid for
seconds, bound to user and desktop, stored only as its SHA-256: the gateway resolves it by exact
lookup and learns the target from the store, never from the client.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlmodel import Session

from controlplane.db import audit, desktops, pools, tickets
from controlplane.db.engine import session_scope
from controlplane.db.models import ConnectTicket, Desktop, Pool
from controlplane.domain.desktop import DesktopState
from controlplane.errors import ExpectedError, Forbidden, TemporaryError
from controlplane.services import identity, sessions, telemetry
from controlplane.services.context import Context
from controlplane.services.tokens import Claims


@dataclass(frozen=True)
class Connection:
    ticket: str
    desktop: str
    expires_at: datetime


@dataclass(frozen=True)
class Target:
    username: str
    desktop: str
    desktop_id: int
    pool: str
    host_id: int  # the host the desktop runs on: the gateway reaches its screen through that host


CLAIM_TRIES = 3  # desktops found not running before the broker says "none ready yet"


class TicketRefused(ExpectedError):
    status = 403

    def __init__(self, reason: str) -> None:
        super().__init__("connect ticket refused", field="ticket")
        self.reason = reason


def digest(ticket: str) -> str:
    return hashlib.sha256(ticket.encode()).hexdigest()


@telemetry.CONNECT.time()
def connect(ctx: Context, user: Claims, pool_name: str) -> Connection:
    """Claim (or find again) the agent's desktop and issue a ticket, in one transaction with the
    disconnect grace: a crash at any point leaves either nothing or an assignment that expires.
    One unit of work: entitlement, the directory's verdict, the session rules and the claim are
    read and written in that transaction (the directory is asked before it opens)."""
    said = sessions.ask_directory(ctx, user.sub)
    with session_scope(ctx.engine) as session:
        every = pools.list_all(session=session)  # read once: entitlement and the directory's verdict
        pool = identity.require_entitled_among(every, user, pool_name)
        verdict = sessions.standing_among(said, every, pool_name)
        if verdict is None:
            limits = sessions.limits_in(session, groups=frozenset(user.groups), pool=pool_name)
            connection, reconnect, host_id = _assign(ctx, session, user, pool, limits)
    if verdict is not None:
        identity.revoke_user(ctx, user.sub, actor="broker")
        raise Forbidden(f"pool: {verdict}", field="pool")
    if not reconnect and limits.start_page:  # a reconnect finds the agent's browser as it was left
        ctx.driver(host_id).show_page(connection.desktop, limits.start_page)
    return connection


def _assign(ctx: Context, session: Session, user: Claims, pool: Pool,
            limits: sessions.Limits) -> tuple[Connection, bool, int]:
    """`connect`'s writes in SESSION: the agent's desktop (found again, or claimed), its ticket and
    its hold. Returns the connection, whether it was a reconnect, and the desktop's host. The
    pool's id and name are taken first: a claim expires every object of SESSION."""
    now, pool_id, pool_name = ctx.clock.now(), pool.id or 0, pool.name
    desktop = tickets.assigned(session=session, pool_id=pool_id, username=user.sub)
    reconnect = desktop is not None
    if desktop is None:
        desktop = _claim_running(ctx, session, pool_id, user.sub)
    if desktop is None:
        raise TemporaryError(f"pool {pool_name}: no desktop is ready yet; try again in a moment", delay=5)
    desktop.assigned_groups = sorted(user.groups)  # its egress follows this agent's policy from now on
    ticket = secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=ctx.ticket_ttl_s)
    hold = expires + timedelta(seconds=limits.grace_s)  # an assignment nobody opens expires like a drop
    if desktop.grace_until is None or desktop.grace_until < hold:
        desktop.grace_until = hold
    session.add(desktop)  # one UPDATE of it, flushed with the ticket's INSERT
    tickets.create(session=session, ticket=ConnectTicket(digest=digest(ticket), username=user.sub,
                                                         desktop_id=desktop.id or 0, expires_at=expires))
    ctx.crashpoint("broker.connect")
    audit.append(session=session, actor=user.sub, action="session.assign" if not reconnect else "session.reconnect",
                 target=desktop.name, pool=pool_name)
    return Connection(ticket=ticket, desktop=desktop.name, expires_at=expires), reconnect, desktop.host_id


def _answers(ctx: Context, desktop: Desktop) -> bool:
    """The desktop's own host says it is up (a host that does not answer: it is not)."""
    try:
        return ctx.driver(desktop.host_id).is_ready(desktop.name)
    except TemporaryError:
        return False


def _claim_running(ctx: Context, session: Session, pool_id: int, username: str) -> Desktop | None:
    """Claim a ready desktop that is really up. The database says READY until the reconciler's next
    pass has seen a power-off or a host restart; a desktop found not ready goes back to
    provisioning (the reconciler starts it again) and the next one is tried."""
    for _ in range(CLAIM_TRIES):
        desktop = tickets.claim_ready(session=session, pool_id=pool_id, username=username, now=ctx.clock.now())
        if desktop is None or _answers(ctx, desktop):
            return desktop
        desktop.assigned_to = None
        desktops.set_state(session=session, desktop=desktop, state=DesktopState.PROVISIONING, now=ctx.clock.now(),
                           reason="not running when claimed")
        audit.append(session=session, actor="broker", action="desktop.not_ready", target=desktop.name)
    return None


def redeem(ctx: Context, ticket: str, username: str) -> Target:
    """Exact lookup of an unused, unexpired ticket issued to USERNAME (the caller's own session)
    whose desktop is still theirs. Any failure burns nothing but the ticket: the burn and the
    refusal's audit are committed, then TicketRefused is raised."""
    with session_scope(ctx.engine) as session:
        try:
            return _redeem_in(session, ticket, username, ctx.clock.now())[0]
        except TicketRefused as err:
            refusal = err
    raise refusal


def _redeem_in(session: Session, ticket: str, username: str, now: datetime) -> tuple[Target, Desktop]:
    """`redeem` in SESSION's transaction: TicketRefused after it wrote the burn and the audit,
    which the caller commits. Also returns the desktop's row: while the caller holds it, the
    session's identity map (weak references) answers a later look-up of it without a query."""
    if not isinstance(ticket, str) or not 20 <= len(ticket) <= 128:
        raise TicketRefused("malformed")
    row = tickets.redeem(session=session, digest=digest(ticket), now=now)
    if row is None:
        audit.append(session=session, actor="gateway", action="session.ticket_refused", target="?",
                     reason="unknown, used or expired")
        raise TicketRefused("unknown, used or expired")
    if row.username != username:
        audit.append(session=session, actor=username, action="session.ticket_refused", target=row.username,
                     reason="ticket of another user")
        raise TicketRefused("ticket of another user")
    desktop = desktops.get(session=session, desktop_id=row.desktop_id)
    if desktop is None or desktop.assigned_to != row.username or desktop.state != DesktopState.IN_USE:
        raise TicketRefused("desktop no longer assigned to this user")
    pool = session.get(Pool, desktop.pool_id)
    return Target(username=row.username, desktop=desktop.name, desktop_id=desktop.id or 0,
                  pool=pool.name if pool else "?", host_id=desktop.host_id), desktop


@dataclass(frozen=True)
class Admission:
    """What the gateway needs before the first pixel: who, which desktop, under which session
    rules, as which display session."""

    user: Claims
    target: Target
    limits: sessions.Limits
    display: sessions.Display


@dataclass(frozen=True)
class Door:
    """Where an admission happens and what it allows: the browser's address, this gateway, its
    watchdog period, its cap on an agent's idle time, and its cap on an agent's live sessions."""

    source: str
    gateway: str
    period_s: float
    idle_cap_s: float
    cap: int | None


def admit(ctx: Context, token: str, ticket: str, door: Door) -> Admission:
    """The gateway's admission as one unit of work: the sign-in is live, the ticket is redeemed,
    the session rules are read and the display session opened (under the agent's cap), in one
    transaction. A refusal (TokenInvalid, TicketRefused, CapReached) commits what it spent (a
    burnt ticket, the stale rows swept) with its `session.refused` audit, then is raised."""
    now = ctx.clock.now()
    claims: Claims | None = None
    refusal: ExpectedError | None = None
    with session_scope(ctx.engine) as session:
        try:
            claims = identity.verify(ctx, token)
            identity.require_live_in(session, claims, now)
            target, _row = _redeem_in(session, ticket, claims.sub, now)  # _row held: open_display_in reads it
            limits = sessions.limits_in(session, groups=frozenset(claims.groups), pool=target.pool)
            limits = replace(limits, idle_s=min(limits.idle_s, door.idle_cap_s))
            display = sessions.open_display_in(session, now, desktop_id=target.desktop_id, user=claims.sub,
                                               jti=claims.jti, source=door.source, gateway=door.gateway,
                                               limits=limits, period_s=door.period_s, cap=door.cap)
            admission = Admission(user=claims, target=target, limits=limits, display=display)
        except ExpectedError as err:
            refusal = err
            sessions.refused_in(session, user=claims.sub if claims else "?", reason=_reason(err), source=door.source)
    if refusal is not None:
        raise refusal
    return admission


def _reason(refusal: ExpectedError) -> str:
    if isinstance(refusal, sessions.CapReached):
        return "connection cap"
    return getattr(refusal, "reason", str(refusal))


def release(ctx: Context, desktop_name: str, *, actor: str, keep_for_user: bool = False) -> None:
    """End an agent's assignment. The desktop is recycled (deleted and replaced by a fresh one), so
    the next agent never gets the previous one's open session. With KEEP_FOR_USER the live display
    session is ended but the desktop stays the same agent's, to come back to within the grace."""
    with session_scope(ctx.engine) as session:
        desktop = desktops.get_or_raise(session=session, name=desktop_name)
        if desktop.state not in (DesktopState.IN_USE, DesktopState.DRAINING):
            return
        user = desktop.assigned_to
        if not keep_for_user:
            desktop.assigned_to = None
            desktops.set_state(session=session, desktop=desktop, state=DesktopState.DELETING, now=ctx.clock.now())
        audit.append(session=session, actor=actor, action="session.release", target=desktop_name, user=user,
                     recycle=not keep_for_user)
    if keep_for_user:
        sessions.request_disconnect(ctx, desktop_name, actor=actor)
