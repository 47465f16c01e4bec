"""Hosts over HTTP: register them, put them in maintenance, and see what each has, what its
desktops take, and whether it answers."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from controlplane.api.deps import Actor, CtxDep, current_admin, wake_reconciler
from controlplane.api.schemas import HostRegister, HostUpdate
from controlplane.services import hosts
from controlplane.services.views import HostPublic

router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"], dependencies=[Depends(current_admin)])
Wake = Depends(wake_reconciler)


@router.get("", response_model=list[HostPublic])
def list_hosts(ctx: CtxDep) -> list[HostPublic]:
    return hosts.views(ctx)


@router.post("", response_model=HostPublic, status_code=status.HTTP_201_CREATED, dependencies=[Wake])
def register_host(body: HostRegister, ctx: CtxDep, actor: Actor) -> HostPublic:
    hosts.register(ctx, name=body.name, uri=body.uri, actor=actor)
    return hosts.view(ctx, body.name)


@router.get("/{name}", response_model=HostPublic)
def get_host(name: str, ctx: CtxDep) -> HostPublic:
    return hosts.view(ctx, name)


@router.patch("/{name}", response_model=HostPublic, dependencies=[Wake])
def update_host(name: str, body: HostUpdate, ctx: CtxDep, actor: Actor) -> HostPublic:
    hosts.set_mode(ctx, name=name, mode=hosts.parse_mode(body.mode), actor=actor)
    return hosts.view(ctx, name)
