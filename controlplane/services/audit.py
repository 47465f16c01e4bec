"""Reading the audit log (writing happens inside each use case's own transaction)."""

from __future__ import annotations

from typing import Any

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.services.context import Context


def recent(ctx: Context, *, limit: int = 100, action: str | None = None) -> list[dict[str, Any]]:
    with session_scope(ctx.engine) as session:
        return [{"id": e.id, "at": e.at, "actor": e.actor, "action": e.action, "target": e.target,
                 "detail": e.detail} for e in audit.list_recent(session=session, limit=limit, action=action)]
