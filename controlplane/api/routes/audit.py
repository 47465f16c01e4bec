"""The audit log, read-only (admins): search, and a CSV export for auditors."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from controlplane.api.deps import Actor, CtxDep, current_admin
from controlplane.services import audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[Depends(current_admin)])
Action = Query(None, max_length=64, description="exact action, or a family ending in '.' (session.)")
Who = Query(None, max_length=256, description="who did it (a user, cli:..., reconciler, gateway)")
Target = Query(None, max_length=256, description="what it was done to (a desktop, pool, user...)")
Since = Query(None, description="from this moment (ISO 8601)")
Until = Query(None, description="before this moment (ISO 8601)")


@router.get("")
def list_events(ctx: CtxDep, limit: int = Query(100, ge=1, le=1000), action: str | None = Action,
                actor: str | None = Who, target: str | None = Target, since: datetime | None = Since,
                until: datetime | None = Until) -> list[dict[str, Any]]:
    return audit.recent(ctx, limit=limit, action=action, actor=actor, target=target, since=since, until=until)


@router.get("/export.csv", response_class=Response)
def export_events(ctx: CtxDep, who: Actor, limit: int = Query(10000, ge=1, le=100000), action: str | None = Action,
                  actor: str | None = Who, target: str | None = Target, since: datetime | None = Since,
                  until: datetime | None = Until) -> Response:
    text = audit.export_csv(ctx, by=who, limit=limit, action=action, actor=actor, target=target, since=since,
                            until=until)
    return Response(text, media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="shiftdesk-audit.csv"', "Cache-Control": "no-store"})
