"""Login, logout and (for admins) revocation of a user's sessions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from controlplane.api.deps import Actor, CtxDep, CurrentUser
from controlplane.api.schemas import Login, LoginPublic, Revoke
from controlplane.services import identity
from controlplane.services.identity import SESSION_COOKIE

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


@router.post("/login", response_model=LoginPublic)
def login(body: Login, ctx: CtxDep, request: Request, response: Response) -> LoginPublic:
    """Bind to AD as the user; a short-lived token comes back (and, for the gateway's WebSocket,
    as an HttpOnly SameSite=Strict cookie). 401 on any refusal, 503 if AD is down."""
    token, claims = identity.login(ctx, body.username, body.password,
                                   source=request.client.host if request.client else "?")
    response.set_cookie(SESSION_COOKIE, token, max_age=ctx.auth.ttl_s, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/gateway")
    return LoginPublic(token=token, role=claims.role, username=claims.sub, expires_at=claims.exp)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(ctx: CtxDep, user: CurrentUser) -> None:
    identity.logout(ctx, user)


@router.post("/revoke", tags=["admin"])
def revoke(body: Revoke, ctx: CtxDep, actor: Actor) -> dict[str, int]:
    """End every session of a user at once (admins only)."""
    return {"revoked": identity.revoke_user(ctx, body.username, actor=actor)}
