"""What an agent sees of their own: identity, entitled pools, the policy that governs them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from controlplane.api.deps import CtxDep, CurrentUser
from controlplane.services import broker, identity, policies, sessions

router = APIRouter(prefix="/api/v1/me", tags=["me"])


@router.get("")
def me(user: CurrentUser) -> dict[str, Any]:
    return {"username": user.sub, "role": user.role, "groups": list(user.groups)}


@router.get("/pools")
def my_pools(ctx: CtxDep, user: CurrentUser) -> list[dict[str, str]]:
    return [{"name": p.name} for p in identity.entitled_pools(ctx, user.groups)]


@router.get("/policy")
def my_policy(pool: str, ctx: CtxDep, user: CurrentUser) -> dict[str, Any]:
    """The effective policy on a desktop of POOL; 403 for a pool the user is not entitled to."""
    identity.require_entitled(ctx, user, pool)
    return policies.effective_for(ctx, user.sub, frozenset(user.groups), pool)


@router.post("/pools/{pool}/connect")
def connect(pool: str, ctx: CtxDep, user: CurrentUser) -> dict[str, Any]:
    """Assign (or find again) a desktop and return a single-use connect ticket for the gateway."""
    c = broker.connect(ctx, user, pool)
    return {"ticket": c.ticket, "desktop": c.desktop, "expires_at": c.expires_at, "gateway": "/gateway"}


@router.get("/pools/{pool}/desktop")
def my_desktop(pool: str, ctx: CtxDep, user: CurrentUser) -> dict[str, Any]:
    """The agent's own desktop in POOL, with the time a ramp-down will sign them out (if any)."""
    identity.require_entitled(ctx, user, pool)
    return sessions.my_desktop(ctx, user=user.sub, pool=pool)
