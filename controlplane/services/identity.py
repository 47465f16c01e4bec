"""Login, sessions and entitlements: who may do what, decided from Active Directory groups.

Roles: members of the configured admin group get the admin API; everyone else who logs in is
an agent and sees the pools their groups are entitled to. AD is asked at login only: a running
session keeps working while AD is down (its token and session row are local).
"""

from __future__ import annotations

from datetime import timedelta

from controlplane.db import audit, pools, sessions
from controlplane.db.engine import session_scope
from controlplane.db.models import ApiSession, Pool
from controlplane.errors import AuthFailed, Forbidden, PermanentError, TemporaryError
from controlplane.services import tokens
from controlplane.services.context import Context
from controlplane.services.tokens import Claims, TokenInvalid

ADMIN, AGENT = "admin", "agent"
SESSION_COOKIE = "sd_session"  # the token again, HttpOnly, for the gateway's WebSocket only


def login(ctx: Context, username: str, password: str, *, source: str) -> tuple[str, Claims]:
    if ctx.directory is None:
        raise PermanentError("login: no directory configured (SHIFTDESK_LDAP__URL)")
    try:
        who = ctx.directory.authenticate(username, password)
    except AuthFailed as err:
        _audit(ctx, username[:64] if isinstance(username, str) else "?", "auth.login_failed", source=source,
               reason=err.reason)
        raise
    except TemporaryError:
        _audit(ctx, username[:64], "auth.login_failed", source=source, reason="directory unavailable")
        raise
    role = ADMIN if ctx.auth.admin_group in who.groups else AGENT
    now = ctx.clock.now()
    token, claims = tokens.issue(ctx.auth.key, sub=who.username, role=role, groups=sorted(who.groups), now=now,
                                 ttl_s=ctx.auth.ttl_s)
    with session_scope(ctx.engine) as session:
        sessions.create(session=session, api_session=ApiSession(
            jti=claims.jti, username=who.username, role=role, issued_at=now,
            expires_at=now + timedelta(seconds=ctx.auth.ttl_s)))
        audit.append(session=session, actor=who.username, action="auth.login", target=who.username, role=role,
                     source=source, session_id=claims.jti[:8])
    return token, claims


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
    now = ctx.clock.now()
    claims = tokens.verify(ctx.auth.key, token, now=now)
    with session_scope(ctx.engine) as session:
        row = sessions.get(session=session, jti=claims.jti)
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise TokenInvalid("session ended")
    return claims


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
    mine = {g.lower() for g in groups}
    with session_scope(ctx.engine) as session:
        return [p for p in pools.list_all(session=session)
                if not p.deleting and mine & {g.lower() for g in p.groups}]


def require_entitled(ctx: Context, claims: Claims, pool: str) -> Pool:
    """The pool if CLAIMS' groups are entitled to it; otherwise Forbidden (same for unknown pools)."""
    for p in entitled_pools(ctx, claims.groups):
        if p.name == pool:
            return p
    raise Forbidden(f"pool: you are not entitled to {pool!r}", field="pool")


def _audit(ctx: Context, actor: str, action: str, **detail: object) -> None:
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=actor, action=action, target=actor, **detail)
