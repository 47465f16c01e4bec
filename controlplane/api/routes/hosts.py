"""Hosts over HTTP: what each has, what its desktops take, and whether it answers."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from controlplane.api.deps import CtxDep, current_admin
from controlplane.services import hosts
from controlplane.services.views import HostPublic

router = APIRouter(prefix="/api/v1/hosts", tags=["hosts"], dependencies=[Depends(current_admin)])


@router.get("", response_model=list[HostPublic])
def list_hosts(ctx: CtxDep) -> list[HostPublic]:
    return hosts.views(ctx)
