"""Live display sessions (admins): who works where, from where, since when. Ending one is
POST /api/v1/desktops/NAME/disconnect; ending all of a user's is POST /api/v1/auth/revoke."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from controlplane.api.deps import CtxDep, current_admin
from controlplane.services import sessions
from controlplane.services.views import SessionPublic

router = APIRouter(prefix="/api/v1/sessions", tags=["sessions"], dependencies=[Depends(current_admin)])


@router.get("", response_model=list[SessionPublic])
def list_sessions(ctx: CtxDep, request: Request) -> list[SessionPublic]:
    return sessions.live(ctx, request.app.state.settings.gateway.watchdog_period_s)
