"""The gateway's WebSocket endpoint: who is asking (session cookie), which desktop (the ticket,
looked up in the store), then the filtered relay. The client never names a target."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from controlplane.config import GatewaySettings
from controlplane.domain.console import RemoteConsole
from controlplane.domain.rfb.filter import Policy, RfbFilter
from controlplane.domain.rfb.stream import FilterClosed
from controlplane.domain.session import NEEDS_SIGN_IN, EndReason
from controlplane.errors import ExpectedError, TemporaryError
from controlplane.gateway.relay import Disconnected, Outcome, Pace, Watchdog, relay
from controlplane.services import broker, sessions, telemetry
from controlplane.services.context import Context
from controlplane.services.identity import SESSION_COOKIE

log = logging.getLogger(__name__)
router = APIRouter()


POLICY_VIOLATION, NORMAL, GOING_AWAY = 1008, 1000, 1001
GATEWAY_ID = f"{socket.gethostname()}:{os.getpid()}"


class BrowserSocket:
    def __init__(self, ws: WebSocket, max_frame_bytes: int) -> None:
        self.ws = ws
        self.max_frame_bytes = max_frame_bytes

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_bytes(data)

    async def receive_bytes(self) -> bytes:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise Disconnected()
        data = message.get("bytes")
        if data is None:
            raise Disconnected()  # text frames have no place in RFB
        if len(data) > self.max_frame_bytes:  # the server caps frames too (uvicorn's ws_max_size)
            raise FilterClosed(f"WebSocket message of {len(data)} bytes")
        return data


class LiveSessions:
    """This gateway process's live sessions: the session tasks, and the shutdown signal every
    watchdog listens to. (How many sessions a user has is counted in the database, across replicas.)"""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.stopping = asyncio.Event()
        self._directory: DirectoryVerdicts | None = None

    def directory(self, ctx: Context) -> DirectoryVerdicts:
        if self._directory is None:
            self._directory = DirectoryVerdicts(ctx)
        return self._directory

    async def end_all(self, timeout: float) -> None:
        """Tell every live session the control plane is going away, and wait (up to TIMEOUT) for
        each to close and be audited."""
        self.stopping.set()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=timeout)


def install(app: FastAPI) -> None:
    """Mount the gateway on the control plane's app (main.py does this)."""
    app.state.gateway_live = LiveSessions()
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
    live: LiveSessions = ws.app.state.gateway_live
    source = ws.client.host if ws.client else "?"
    token = ws.cookies.get(SESSION_COOKIE) or _bearer(ws)
    turned_away = ("origin not allowed" if not origin_allowed(ws, settings)
                   else "the control plane is shutting down" if live.stopping.is_set() else None)
    if turned_away is not None:
        await run_in_threadpool(sessions.refused, ctx, user="?", reason=turned_away, source=source)
        await ws.close(code=POLICY_VIOLATION)
        return
    door = broker.Door(source=source, gateway=GATEWAY_ID, period_s=settings.watchdog_period_s,
                       idle_cap_s=settings.idle_timeout_s, cap=settings.max_connections_per_user)
    try:  # the cap counts the user's sessions on every replica (their rows), not this process's
        admitted = await run_in_threadpool(broker.admit, ctx, token or "", ws.query_params.get("ticket", ""), door)
    except ExpectedError:  # audited with its reason by the admission
        await ws.close(code=POLICY_VIOLATION)
        return
    await _serve(ws, ctx, settings, live, admitted.target, admitted.display, admitted.limits)


async def _serve(ws: WebSocket, ctx: Context, settings: GatewaySettings, live: LiveSessions, target: broker.Target,
                 display: sessions.Display, limits: sessions.Limits) -> None:
    """Accept, relay through the filter, and close the display session: audited and with the
    desktop's grace started only if no other session of it is live."""
    outcome = Outcome(reason="cancelled")
    period = settings.watchdog_period_s
    task = asyncio.current_task()
    if task is not None:
        live.tasks.add(task)
    try:
        offered = ws.headers.get("sec-websocket-protocol", "")
        await ws.accept(subprotocol="binary" if "binary" in offered else None)
        endpoint = ctx.driver(target.host_id).console(target.desktop)  # through the desktop's own host
        tls = await run_in_threadpool(ctx.console_tls) if isinstance(endpoint, RemoteConsole) else None
        await relay(BrowserSocket(ws, settings.max_frame_bytes), endpoint, tls=tls,
                    handshake_timeout=settings.handshake_timeout_s, idle_timeout=limits.idle_s, outcome=outcome,
                    watchdog=_watchdog(ctx, display, target.pool, limits, period, live.stopping,
                                       live.directory(ctx)),
                    policy=Policy(violation_budget=settings.violation_budget),
                    pace=Pace(rate=settings.max_input_bytes_per_s, burst=4 * settings.max_input_bytes_per_s))
    except (WebSocketDisconnect, OSError) as err:
        outcome.reason = f"dropped: {type(err).__name__}"
    except TemporaryError as err:  # the desktop's host does not answer
        outcome.reason = f"dropped: host unreachable ({err})"
    except asyncio.CancelledError:  # the server is stopping under us (unless the session had ended)
        outcome.reason = EndReason.SHUTDOWN if outcome.reason == "cancelled" else outcome.reason
        raise
    finally:
        if task is not None:
            live.tasks.discard(task)
        telemetry.GATEWAY_BYTES.labels("from_browser").inc(outcome.bytes_from_browser)
        telemetry.GATEWAY_BYTES.labels("to_browser").inc(outcome.bytes_to_browser)
        # off the event loop, and finished even when this task is being cancelled (a shutdown)
        closing = asyncio.get_running_loop().run_in_executor(None, functools.partial(  # a thread runs to its end
            sessions.close_display, ctx, display, desktop=target.desktop, reason=outcome.reason,
            bytes_in=outcome.bytes_from_browser, bytes_out=outcome.bytes_to_browser, events=outcome.events,
            limits=limits, period_s=period))
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            await closing
            raise
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            code = GOING_AWAY if outcome.reason == EndReason.SHUTDOWN else POLICY_VIOLATION if (
                outcome.reason in NEEDS_SIGN_IN) else NORMAL
            await ws.close(code=code, reason=str(outcome.reason)[:120])  # may be closed already


def _watchdog(ctx: Context, display: sessions.Display, pool: str, limits: sessions.Limits, period: float,
              stopping: asyncio.Event, directory: DirectoryVerdicts) -> Watchdog:
    """Ends the session when the agent is idle (no keys, no pointer moves), past the policy's maximum
    length, when a rule ends it (an admin, the desktop taken away, the shift's log-off time, the
    sign-in revoked, the account disabled or no longer entitled in the directory) or when the
    control plane shuts down. Checked every PERIOD seconds; each check also refreshes the
    session's heartbeat, which keeps the desktop held for the agent."""

    async def watch(filt: RfbFilter) -> str:
        loop = asyncio.get_running_loop()
        began = last_input_at = loop.time()
        inputs = filt.state.inputs
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await stopping.wait()
            if stopping.is_set():
                return EndReason.SHUTDOWN
            now = loop.time()
            if filt.state.inputs != inputs:
                inputs, last_input_at = filt.state.inputs, now
            if now - last_input_at >= limits.idle_s:
                return EndReason.IDLE
            if now - began >= limits.max_s:
                return EndReason.MAX_LENGTH
            usage = sessions.Usage(bytes_from_browser=filt.client.bytes_in, bytes_to_browser=filt.server.bytes_out,
                                   idle_s=now - last_input_at)
            verdict = (await run_in_threadpool(sessions.heartbeat, ctx, display, limits=limits, period_s=period,
                                               usage=usage)
                       or directory.verdict(display.user, pool, period))
            if verdict is not None:
                return verdict

    return watch


class DirectoryVerdicts:
    """What the directory says of each live agent, asked at most once per period per agent and pool,
    in the background: a slow or hung directory never delays a session's heartbeat (which holds its
    desktop) or its end, and costs one worker thread per agent at most, not one per session."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.known: dict[tuple[str, str], tuple[float, EndReason | None]] = {}
        self.asking: dict[tuple[str, str], asyncio.Future[EndReason | None]] = {}

    def verdict(self, user: str, pool: str, period: float) -> EndReason | None:
        """What the directory last said of USER in POOL (None: fine, or not known yet). An answer older
        than PERIOD is asked again in the background: it counts from the next check on."""
        key, now = (user, pool), asyncio.get_running_loop().time()
        at, said = self.known.get(key, (-1e9, None))
        if now - at >= period and key not in self.asking:
            if len(self.known) > 100_000:  # agents long gone: start afresh rather than grow
                self.known.clear()
            self.asking[key] = asyncio.ensure_future(run_in_threadpool(sessions.standing, self.ctx, user=user,
                                                                       pool=pool))
            self.asking[key].add_done_callback(lambda done: self._heard(key, done))
        return said

    def _heard(self, key: tuple[str, str], done: asyncio.Future[EndReason | None]) -> None:
        self.asking.pop(key, None)
        failure = None if done.cancelled() else done.exception()
        if failure is not None:
            log.error("directory check of %s failed: %s", key[0], failure)
        said = None if done.cancelled() or failure is not None else done.result()  # failed: no news
        self.known[key] = (asyncio.get_running_loop().time(), said)


def _bearer(ws: WebSocket) -> str | None:
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None
