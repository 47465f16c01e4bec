"""Dependencies routes declare with Annotated aliases: the context, and who is asking.

Every route but login needs a bearer token. `CurrentAdmin` refuses agents; `CurrentAgent` is
any logged-in user acting on their own objects (the services check ownership).

Only `current_user` blocks (it reads the sign-in's row) and is a plain function, which FastAPI
runs in its thread pool; the others are `async def`: FastAPI would otherwise hand each of them
to a thread too, one hop per dependency per request, for an attribute read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from controlplane.errors import Forbidden
from controlplane.services import identity
from controlplane.services.context import Context
from controlplane.services.tokens import Claims, TokenInvalid


async def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def current_user(request: Request) -> Claims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise TokenInvalid("no bearer token")
    return identity.authorize(request.app.state.ctx, token.strip())


async def current_admin(user: Annotated[Claims, Depends(current_user)]) -> Claims:
    if user.role != identity.ADMIN:
        raise Forbidden("this endpoint is for administrators", field="authorization")
    return user


async def actor_of(user: Annotated[Claims, Depends(current_admin)]) -> str:
    return user.sub


async def wake_reconciler(request: Request) -> AsyncIterator[None]:
    """Wake the reconciler once the request's change is committed (after the handler: woken
    before it, a pass would see the old world and the change would wait a whole period)."""
    yield
    reconciler = getattr(request.app.state, "reconciler", None)
    if reconciler is not None:
        reconciler.wake.set()


CtxDep = Annotated[Context, Depends(get_ctx)]
CurrentUser = Annotated[Claims, Depends(current_user)]
CurrentAdmin = Annotated[Claims, Depends(current_admin)]
Actor = Annotated[str, Depends(actor_of)]
