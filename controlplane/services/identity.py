"""Login, sessions and entitlements: who may do what, decided from Active Directory groups.

Roles: members of the configured admin group get the admin API; everyone else who logs in is
an agent and sees the pools their groups are entitled to. Groups are compared by canonical
full DN or SID (domain/groups.py), never by cn, which anyone with rights in some OU can reuse.
Failed sign-ins are throttled before AD is asked (domain/login_throttle.py has the rule).
AD is asked at login only: a running session keeps working while AD is down (its token and
session row are local).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import Session

from controlplane.db import audit, pools, sessions
from controlplane.db.engine import session_scope
from controlplane.db.models import ApiSession, Pool
from controlplane.domain.ports import Identity
from controlplane.errors import AuthFailed, Forbidden, PermanentError, TemporaryError, Throttled
from controlplane.services import policies, tokens
from controlplane.services.context import Context
from controlplane.services.tokens import Claims, TokenInvalid

ADMIN, AGENT = "admin", "agent"
SESSION_COOKIE = "sd_session"  # the token again, HttpOnly, for the gateway's WebSocket only


def login(ctx: Context, username: str, password: str, *, source: str) -> tuple[str, Claims]:
    """Throttle, then bind as the user; refusals are audited in aggregate (domain/login_throttle.py)."""
    if ctx.directory is None:
        raise PermanentError("login: no directory configured (SHIFTDESK_LDAP__URL)")
    name = username[:64] if isinstance(username, str) else "?"
    now = ctx.clock.now()
    guard = ctx.login_throttle
    refusal = guard.check(name, source, now.timestamp())
    if refusal is not None:
        _audit_refusal(ctx, "auth.login_throttled", _scope_key(refusal.scope, name, source), actor=name,
                       source=source, scope=refusal.scope, retry_after=refusal.retry_after)
        raise Throttled(refusal.retry_after)
    try:
        who = ctx.directory.authenticate(username, password)
    except AuthFailed as err:
        guard.failed(name, source, now.timestamp())
        _audit_refusal(ctx, "auth.login_failed", (name, source), actor=name, source=source, reason=err.reason)
        raise
    except TemporaryError:
        _audit_refusal(ctx, "auth.login_failed", (name, source, "unavailable"), actor=name, source=source,
                       reason="directory unavailable")
        raise
    guard.succeeded(name, source, now.timestamp())
    return _open_session(ctx, who, source=source, now=now)


def _open_session(ctx: Context, who: Identity, *, source: str, now: datetime) -> tuple[str, Claims]:
    """The sign-in's token and session row, with its audit: one transaction, which also reads
    the groups ShiftDesk names (the directory was asked before it opened)."""
    role = ADMIN if ctx.auth.admin_group and ctx.auth.admin_group in who.groups else AGENT
    with session_scope(ctx.engine) as session:
        groups = sorted(who.groups & _known_groups_in(ctx, session))
        token, claims = tokens.issue(ctx.auth.key, sub=who.username, role=role, groups=groups, now=now,
                                     ttl_s=ctx.auth.ttl_s)
        sessions.create(session=session, api_session=ApiSession(
            jti=claims.jti, username=who.username, role=role, issued_at=now,
            expires_at=now + timedelta(seconds=ctx.auth.ttl_s)))
        audit.append(session=session, actor=who.username, action="auth.login", target=who.username, role=role,
                     source=source, session_id=claims.jti[:8])
    return token, claims


def _known_groups_in(ctx: Context, session: Session) -> frozenset[str]:
    """Every group ShiftDesk's configuration names (admin group, pools, policies), read in SESSION.

    A token carries only the user's groups among these: full DNs are long, and a user in a
    hundred groups would not fit the 4 KiB token (or a cookie). A group named later counts from
    the user's next sign-in, as a change of membership in AD does."""
    named = {g for p in pools.list_all(session=session) for g in p.groups}
    named |= {g for p in policies.active_in(session) for g in p.groups}
    return frozenset(named | {ctx.auth.admin_group} - {""})


def _scope_key(scope: str, name: str, source: str) -> tuple[str, ...]:
    """Refusals of one throttle are counted together: a spray of many names from one address is
    one key ("*", address), not one per name."""
    return {"source": ("*", source), "user": (name, "*")}.get(scope, (name, source))


def local_admin_token(ctx: Context, *, actor: str) -> tuple[str, Claims]:
    """Break-glass admin token for someone with root on the control-plane host (who could read the
    signing key anyway): bootstraps a fresh install before AD is wired. Short-lived and audited."""
    now = ctx.clock.now()
    token, claims = tokens.issue(ctx.auth.key, sub=actor, role=ADMIN, groups=[], now=now, ttl_s=ctx.auth.ttl_s)
    with session_scope(ctx.engine) as session:
        sessions.create(session=session, api_session=ApiSession(
            jti=claims.jti, username=actor, role=ADMIN, issued_at=now,
            expires_at=now + timedelta(seconds=ctx.auth.ttl_s)))
        audit.append(session=session, actor=actor, action="auth.local_admin_token", target=actor,
                     session_id=claims.jti[:8])
    return token, claims


def authorize(ctx: Context, token: str) -> Claims:
    """Signature, expiry, and a live (not logged-out, not revoked) session row."""
    claims = verify(ctx, token)
    with session_scope(ctx.engine) as session:
        require_live_in(session, claims, ctx.clock.now())
    return claims


def verify(ctx: Context, token: str) -> Claims:
    """`authorize`'s first half, which needs no database: the token's signature and expiry."""
    return tokens.verify(ctx.auth.key, token, now=ctx.clock.now())


def require_live_in(session: Session, claims: Claims, now: datetime) -> None:
    """`authorize`'s second half, in SESSION's transaction: TokenInvalid unless the sign-in's
    session row is live (not logged out, not revoked, not expired)."""
    row = sessions.get(session=session, jti=claims.jti)
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        raise TokenInvalid("session ended")


def logout(ctx: Context, claims: Claims) -> None:
    with session_scope(ctx.engine) as session:
        sessions.revoke(session=session, jti=claims.jti, now=ctx.clock.now())
        audit.append(session=session, actor=claims.sub, action="auth.logout", target=claims.sub)


def revoke_user(ctx: Context, username: str, *, actor: str) -> int:
    with session_scope(ctx.engine) as session:
        count = sessions.revoke_user(session=session, username=username, now=ctx.clock.now())
        audit.append(session=session, actor=actor, action="auth.revoke", target=username, sessions=count)
        return count


def entitled_pools(ctx: Context, groups: frozenset[str] | tuple[str, ...]) -> list[Pool]:
    """Pools naming one of GROUPS (canonical DNs or SIDs, as pools store them; a bare name stored
    before DN matching matches nothing)."""
    with session_scope(ctx.engine) as session:
        return entitled_among(pools.list_all(session=session), groups)


def entitled_among(every: list[Pool], groups: frozenset[str] | tuple[str, ...]) -> list[Pool]:
    """`entitled_pools` among EVERY pool, read by the caller (a connect reads them once)."""
    mine = set(groups)
    return [p for p in every if not p.deleting and mine & set(p.groups)]


def require_entitled(ctx: Context, claims: Claims, pool: str) -> Pool:
    """The pool if CLAIMS' groups are entitled to it; otherwise Forbidden (same for unknown pools)."""
    with session_scope(ctx.engine) as session:
        return require_entitled_among(pools.list_all(session=session), claims, pool)


def require_entitled_among(every: list[Pool], claims: Claims, pool: str) -> Pool:
    """`require_entitled` among EVERY pool, read by the caller."""
    for p in entitled_among(every, claims.groups):
        if p.name == pool:
            return p
    raise Forbidden(f"pool: you are not entitled to {pool!r}", field="pool")


def _audit_refusal(ctx: Context, action: str, key: tuple[str, ...], *, actor: str, **detail: object) -> None:
    """One row for the 1st, 2nd, 4th, 8th... refusal of KEY in a window, with the running count."""
    count = ctx.login_throttle.audit.count((action, *key), ctx.clock.now().timestamp())
    if count is None:
        return
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=actor, action=action, target=actor, count=count, **detail)
