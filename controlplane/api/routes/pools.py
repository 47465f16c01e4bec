"""Pools: the API changes wishes; the reconciler (woken here) makes them true."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from controlplane.api.deps import Actor, CtxDep, current_admin, wake_reconciler
from controlplane.api.schemas import (
    PoolCreate,
    PoolPublic,
    PoolResize,
    RolloutCreate,
    RolloutPublic,
    RolloutRollback,
    same_as_path,
)
from controlplane.domain.rollout import Thresholds
from controlplane.services import pools, rollouts

router = APIRouter(prefix="/api/v1/pools", tags=["pools"], dependencies=[Depends(current_admin)])
Wake = Depends(wake_reconciler)


@router.get("", response_model=list[PoolPublic])
def list_pools(ctx: CtxDep) -> list[PoolPublic]:
    return pools.views(ctx)


@router.post("", response_model=PoolPublic, status_code=status.HTTP_201_CREATED, dependencies=[Wake])
def create_pool(body: PoolCreate, ctx: CtxDep, actor: Actor) -> PoolPublic:
    pools.create(ctx, **body.model_dump(), actor=actor)
    return pools.views(ctx, body.name)[0]


@router.get("/{name}", response_model=PoolPublic)
def get_pool(name: str, ctx: CtxDep) -> PoolPublic:
    return pools.views(ctx, name)[0]


@router.patch("/{name}", response_model=PoolPublic, dependencies=[Wake])
def resize_pool(name: str, body: PoolResize, ctx: CtxDep, actor: Actor) -> PoolPublic:
    pools.update(ctx, name, size=body.size, min_size=body.min_size, max_size=body.max_size, groups=body.groups,
                 clone=body.clone, image=body.image, actor=actor)
    return pools.views(ctx, name)[0]


@router.put("/{name}", response_model=PoolPublic, dependencies=[Wake])
def replace_pool(name: str, body: PoolCreate, ctx: CtxDep, actor: Actor) -> PoolPublic:
    """Every field at once (Terraform's update); memory, vCPUs and memory sharing cannot change."""
    same_as_path("name", name, body.name)
    pools.replace(ctx, name, **body.model_dump(exclude={"name"}), actor=actor)
    return pools.views(ctx, name)[0]


@router.delete("/{name}", response_model=PoolPublic, status_code=status.HTTP_202_ACCEPTED, dependencies=[Wake])
def delete_pool(name: str, ctx: CtxDep, actor: Actor) -> PoolPublic:
    pools.delete(ctx, name, actor=actor)
    return pools.views(ctx, name)[0]


@router.post("/{name}/rollouts", response_model=RolloutPublic, status_code=status.HTTP_201_CREATED,
             dependencies=[Wake], tags=["rollouts"])
def start_rollout(name: str, body: RolloutCreate, ctx: CtxDep, actor: Actor) -> RolloutPublic:
    """Move the pool to a new image: the canary, then batches of idle desktops (never one in use);
    rolls itself back when the new version is worse than the old beyond the thresholds."""
    return rollouts.start(ctx, name, image=body.image, canary=body.canary, batch=body.batch, soak_s=body.soak_s,
                          thresholds=Thresholds(**body.thresholds.model_dump()), actor=actor)


@router.get("/{name}/rollout", response_model=RolloutPublic, tags=["rollouts"])
def get_rollout(name: str, ctx: CtxDep) -> RolloutPublic:
    """The pool's rollout in progress, or its last one."""
    return rollouts.status(ctx, name)


@router.post("/{name}/rollout/rollback", response_model=RolloutPublic, dependencies=[Wake], tags=["rollouts"])
def rollback_rollout(name: str, body: RolloutRollback, ctx: CtxDep, actor: Actor) -> RolloutPublic:
    """Stop the rollout and point the pool back at the previous version."""
    return rollouts.roll_back(ctx, name, actor=actor, reason=body.reason)
