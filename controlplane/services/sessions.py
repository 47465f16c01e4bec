"""Display sessions in the audit log: start, end or drop, with reason and bytes each way, and
every filter event (clipboard dropped, encodings stripped, alerts)."""

from __future__ import annotations

from typing import Any

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.services.context import Context


def started(ctx: Context, *, user: str, desktop: str, source: str) -> None:
    _append(ctx, user, "session.start", desktop, source=source)


def ended(ctx: Context, *, user: str, desktop: str, reason: str, bytes_in: int, bytes_out: int) -> None:
    clean = reason in ("browser closed", "idle timeout", "desktop closed")
    _append(ctx, user, "session.end" if clean else "session.drop", desktop, reason=reason,
            bytes_from_browser=bytes_in, bytes_to_browser=bytes_out)


def filter_event(ctx: Context, *, user: str, desktop: str, kind: str, detail: dict[str, Any]) -> None:
    _append(ctx, user, f"session.{kind}", desktop, **detail)


def refused(ctx: Context, *, user: str, reason: str, source: str) -> None:
    _append(ctx, user, "session.refused", "?", reason=reason, source=source)


def _append(ctx: Context, actor: str, action: str, target: str, **detail: Any) -> None:
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=actor, action=action, target=target, **detail)
