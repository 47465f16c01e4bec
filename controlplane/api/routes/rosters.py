"""One pool's roster at a time over HTTP, for declarative clients (the Terraform module in
terraform/); `schedules` applies roster files in bulk. Every write is audited and re-plans at once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status

from controlplane.api.deps import Actor, CtxDep, current_admin, wake_reconciler
from controlplane.api.schemas import RosterSource, same_as_path
from controlplane.services import scaling

router = APIRouter(prefix="/api/v1/rosters", tags=["schedules"], dependencies=[Depends(current_admin)])
Wake = Depends(wake_reconciler)


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Wake])
def create_roster(body: RosterSource, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    scaling.put(ctx, body.pool, body.yaml, actor=actor, create=True)
    scaling.evaluate(ctx)
    return scaling.show(ctx, body.pool)


@router.get("/{pool}")
def read_roster(pool: str, ctx: CtxDep) -> dict[str, Any]:
    return scaling.show(ctx, pool)


@router.put("/{pool}", dependencies=[Wake])
def replace_roster(pool: str, body: RosterSource, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    same_as_path("pool", pool, body.pool)
    if scaling.put(ctx, pool, body.yaml, actor=actor):
        scaling.evaluate(ctx)
    return scaling.show(ctx, pool)


@router.delete("/{pool}", status_code=status.HTTP_204_NO_CONTENT)
def delete_roster(pool: str, ctx: CtxDep, actor: Actor) -> None:
    scaling.remove(ctx, pool, actor=actor)
