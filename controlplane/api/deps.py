"""Dependencies routes declare with Annotated aliases. The actor is a placeholder until AD login
(issue: identity) lands; every action is already audited under it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from controlplane.services.context import Context


def get_ctx(request: Request) -> Context:
    return request.app.state.ctx


def get_actor(request: Request) -> str:
    return "admin@" + (request.client.host if request.client else "local")


def wake_reconciler(request: Request) -> None:
    reconciler = getattr(request.app.state, "reconciler", None)
    if reconciler is not None:
        reconciler.wake.set()


CtxDep = Annotated[Context, Depends(get_ctx)]
Actor = Annotated[str, Depends(get_actor)]
