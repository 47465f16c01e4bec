"""The gateway's WebSocket endpoint: who is asking (session cookie), which desktop (the ticket,
looked up in the store), then the filtered relay. The client never names a target."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import replace
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from controlplane.config import GatewaySettings
from controlplane.domain.rfb.filter import RfbFilter
from controlplane.domain.rfb.stream import Event
from controlplane.errors import ExpectedError
from controlplane.gateway.relay import Disconnected, Outcome, Watchdog, relay
from controlplane.services import broker, identity, sessions
from controlplane.services.context import Context
from controlplane.services.identity import SESSION_COOKIE

log = logging.getLogger(__name__)
router = APIRouter()
POLICY_VIOLATION = 1008


class BrowserSocket:
    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def receive_bytes(self) -> bytes:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise Disconnected()
        if message.get("bytes") is None:
            raise Disconnected()  # text frames have no place in RFB
        return message["bytes"]


class ConnectionCounts:
    """Per-user connection counts of this gateway process. No lock: check-and-count has no await
    in between, and the event loop runs one coroutine at a time."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()


def install(app: FastAPI) -> None:
    """Mount the gateway on the control plane's app (main.py does this)."""
    app.state.gateway_counts = ConnectionCounts()
    app.include_router(router)


def origin_allowed(ws: WebSocket, settings: GatewaySettings) -> bool:
    origin = ws.headers.get("origin")
    if not origin:
        return False
    if settings.allowed_origins:
        return origin in settings.allowed_origins
    return urlsplit(origin).netloc == ws.headers.get("host")


@router.websocket("/gateway")
async def gateway(ws: WebSocket) -> None:
    ctx: Context = ws.app.state.ctx
    settings: GatewaySettings = ws.app.state.settings.gateway
    counts: ConnectionCounts = ws.app.state.gateway_counts
    source = ws.client.host if ws.client else "?"
    token = ws.cookies.get(SESSION_COOKIE) or _bearer(ws)
    try:
        if not origin_allowed(ws, settings):
            raise ExpectedError("origin not allowed", field="origin")
        user = await run_in_threadpool(identity.authorize, ctx, token or "")
        target = await run_in_threadpool(broker.redeem, ctx, ws.query_params.get("ticket", ""), user.sub)
    except ExpectedError as err:
        await run_in_threadpool(sessions.refused, ctx, user="?", reason=getattr(err, "reason", str(err)),
                                source=source)
        await ws.close(code=POLICY_VIOLATION)
        return
    if counts.open[user.sub] >= settings.max_connections_per_user:
        await ws.close(code=POLICY_VIOLATION)
        await run_in_threadpool(sessions.refused, ctx, user=user.sub, reason="connection cap", source=source)
        return
    counts.open[user.sub] += 1
    outcome, started = Outcome(reason="cancelled"), False
    limits = sessions.Limits(idle_s=settings.idle_timeout_s, max_s=86400.0, grace_s=300.0)
    try:
        offered = ws.headers.get("sec-websocket-protocol", "")
        await ws.accept(subprotocol="binary" if "binary" in offered else None)
        await run_in_threadpool(sessions.started, ctx, user=user.sub, desktop=target.desktop, source=source)
        started = True
        limits = await run_in_threadpool(sessions.limits_for, ctx, user=user.sub, groups=frozenset(user.groups),
                                         pool=target.pool)
        limits = replace(limits, idle_s=min(limits.idle_s, settings.idle_timeout_s))
        await run_in_threadpool(sessions.mark_live, ctx, target.desktop_id)

        async def on_event(event: Event) -> None:
            await run_in_threadpool(sessions.filter_event, ctx, user=user.sub, desktop=target.desktop,
                                    kind=event.kind, detail=event.detail)

        await relay(BrowserSocket(ws), ctx.hypervisor.vnc_socket(target.desktop),
                    handshake_timeout=settings.handshake_timeout_s,
                    idle_timeout=limits.idle_s, on_event=on_event, outcome=outcome,
                    watchdog=_watchdog(ctx, target.desktop_id, limits, settings.watchdog_period_s))
    except (WebSocketDisconnect, OSError) as err:
        outcome.reason = f"dropped: {type(err).__name__}"
    finally:
        counts.open[user.sub] -= 1
        if started:  # synchronously: this must be written even when the task is being cancelled
            sessions.ended(ctx, user=user.sub, desktop=target.desktop, reason=outcome.reason,
                           bytes_in=outcome.bytes_from_browser, bytes_out=outcome.bytes_to_browser)
            sessions.start_grace(ctx, target.desktop_id, limits.grace_s)
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await ws.close()  # may be closed already, from either side


def _watchdog(ctx: Context, desktop_id: int, limits: sessions.Limits, period: float) -> Watchdog:
    """Ends the session when the agent is idle (no keys or pointer), past the policy's maximum
    length, or an admin disconnected it. Checked every PERIOD seconds."""

    async def watch(filt: RfbFilter) -> str:
        loop = asyncio.get_running_loop()
        began = last_input_at = loop.time()
        inputs = filt.state.inputs
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            if filt.state.inputs != inputs:
                inputs, last_input_at = filt.state.inputs, now
            if now - last_input_at >= limits.idle_s:
                return "idle timeout"
            if now - began >= limits.max_s:
                return "maximum session length"
            if await run_in_threadpool(sessions.disconnect_requested, ctx, desktop_id):
                return "disconnected by an admin"

    return watch


def _bearer(ws: WebSocket) -> str | None:
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
