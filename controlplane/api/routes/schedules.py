"""Rosters over HTTP: list (every pool, with its roster in brief), validate, apply, show, plan (and
the capacity plot)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from fastapi import APIRouter, Depends, Query, Response

from controlplane.api.deps import Actor, CtxDep, current_admin, wake_reconciler
from controlplane.api.schemas import PolicyFiles
from controlplane.services import desktops, scaling
from controlplane.web.capacity_plot import render

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"], dependencies=[Depends(current_admin)])


@router.get("", response_model=list[scaling.RosterSummary])
def list_rosters(ctx: CtxDep) -> list[scaling.RosterSummary]:
    return scaling.list_rosters(ctx)


@router.post("/validate")
def validate(body: PolicyFiles) -> dict[str, Any]:
    return {"valid": True, "pools": sorted(r.pool for r in scaling.validate(body.files))}


@router.post("/apply", dependencies=[Depends(wake_reconciler)])
def apply(body: PolicyFiles, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    changed = scaling.apply(ctx, body.files, actor=actor)
    return {"changed": changed, "scaled": scaling.evaluate(ctx)}


@router.get("/{pool}")
def show(pool: str, ctx: CtxDep) -> dict[str, Any]:
    return scaling.show(ctx, pool)


@router.get("/{pool}/plan")
def plan(pool: str, ctx: CtxDep, days: int = Query(1, ge=1, le=14), step: int = Query(15, ge=5, le=240),
         fmt: str = Query("json", pattern="^(json|png|svg)$")) -> Any:
    points = scaling.plan(ctx, pool, ctx.clock.now().astimezone(UTC), hours=24 * days, step_minutes=step)
    if fmt == "json":
        return [{"at": p.at, "headcount": p.headcount, "desired": p.desired} for p in points]
    actual = len(desktops.list_all(ctx, pool))
    media = "image/png" if fmt == "png" else "image/svg+xml"
    return Response(render(pool, points, actual, fmt), media_type=media)


