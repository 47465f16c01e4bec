"""The audit log, read-only (admins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query

from controlplane.api.deps import CtxDep, current_admin
from controlplane.services import audit

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[Depends(current_admin)])


@router.get("")
def list_events(ctx: CtxDep, limit: int = Query(100, ge=1, le=1000),
                action: str | None = Query(None, max_length=64)) -> list[dict[str, Any]]:
    return audit.recent(ctx, limit=limit, action=action)
