"""Desktops: list, inspect, look at (screenshot), reboot, rebuild, recycle."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status
from fastapi.responses import Response

from controlplane.api.deps import Actor, CtxDep, current_admin, wake_reconciler
from controlplane.api.schemas import DesktopPublic
from controlplane.services import broker, desktops, sessions
from controlplane.services.views import desktop_view

router = APIRouter(prefix="/api/v1/desktops", tags=["desktops"], dependencies=[Depends(current_admin)])
Wake = Depends(wake_reconciler)


@router.get("", response_model=list[DesktopPublic])
def list_desktops(ctx: CtxDep, pool: str | None = None) -> list[DesktopPublic]:
    return [desktop_view(d, p) for d, p in desktops.list_all(ctx, pool)]


@router.get("/{name}", response_model=DesktopPublic)
def get_desktop(name: str, ctx: CtxDep) -> DesktopPublic:
    return desktop_view(*desktops.get(ctx, name))


@router.get("/{name}/screenshot", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the screen, scaled down"}})
def desktop_screenshot(name: str, ctx: CtxDep, actor: Actor) -> Response:
    """The desktop's screen now, as a small PNG (audited: it may show a customer)."""
    return Response(desktops.screenshot(ctx, name, actor=actor), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


@router.post("/{name}/reboot", response_model=DesktopPublic, dependencies=[Wake])
def reboot_desktop(name: str, ctx: CtxDep, actor: Actor) -> DesktopPublic:
    desktops.reboot(ctx, name, actor=actor)
    return desktop_view(*desktops.get(ctx, name))


@router.post("/{name}/rebuild", response_model=DesktopPublic, dependencies=[Wake])
def rebuild_desktop(name: str, ctx: CtxDep, actor: Actor) -> DesktopPublic:
    desktops.rebuild(ctx, name, actor=actor)
    return desktop_view(*desktops.get(ctx, name))


@router.delete("/{name}", response_model=DesktopPublic, status_code=status.HTTP_202_ACCEPTED,
               dependencies=[Wake])
def delete_desktop(name: str, ctx: CtxDep, actor: Actor) -> DesktopPublic:
    desktops.delete(ctx, name, actor=actor)
    return desktop_view(*desktops.get(ctx, name))


@router.post("/{name}/release", response_model=DesktopPublic, dependencies=[Wake])
def release_desktop(name: str, ctx: CtxDep, actor: Actor, keep_for_user: bool = False) -> DesktopPublic:
    """End the agent's assignment: the desktop is recycled (deleted and replaced by a fresh one), so
    nobody else ever gets this agent's open session. KEEP_FOR_USER: only end the live session; the
    desktop stays the same agent's."""
    broker.release(ctx, name, actor=actor, keep_for_user=keep_for_user)
    return desktop_view(*desktops.get(ctx, name))


@router.post("/{name}/disconnect", response_model=DesktopPublic)
def disconnect_desktop(name: str, ctx: CtxDep, actor: Actor) -> DesktopPublic:
    """End the live display session on this desktop (the agent may reconnect within the grace)."""
    sessions.request_disconnect(ctx, name, actor=actor)
    return desktop_view(*desktops.get(ctx, name))
