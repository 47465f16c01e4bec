"""Readiness: what must work before this process takes traffic (GET /readyz)."""

from __future__ import annotations

from controlplane.db.engine import ping
from controlplane.services.context import Context


def problems(ctx: Context, *, reconciler_alive: bool | None) -> list[str]:
    """What is wrong now, in words an operator can act on; empty when ready. RECONCILER_ALIVE is
    None when this process runs no reconciler."""
    found = []
    try:
        ping(ctx.engine)
    except Exception as err:  # noqa: BLE001 - any failure means not ready; its class names the cause
        found.append(f"database: {type(err).__name__}")
    if reconciler_alive is False:
        found.append("reconciler: its thread has stopped")
    return found
