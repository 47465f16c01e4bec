"""The FastAPI application: routers, error mapping, and the reconciler's lifetime."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from controlplane.api import errors, portal
from controlplane.api.routes import (
    audit,
    auth,
    desktops,
    hosts,
    images,
    me,
    policies,
    pools,
    rosters,
    schedules,
    sessions,
)
from controlplane.config import Settings
from controlplane.services import health, telemetry
from controlplane.services.context import Context
from controlplane.services.reconciler import Reconciler


class Background(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


def build_app(ctx: Context, settings: Settings, reconciler: Reconciler | None,
              background: Sequence[Background] = ()) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if reconciler is not None:
            rc = settings.reconciler
            thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconciler", daemon=True,
                                      kwargs={"period": rc.period_s, "busy_period": rc.busy_period_s})
            thread.start()
            app.state.reconciler_thread = thread
        for service in background:
            service.start()
        yield
        for service in background:
            service.stop()
        stop.set()
        if reconciler is not None and thread is not None:
            reconciler.wake.set()
            thread.join(timeout=30)
            reconciler.close()

    app = FastAPI(title="ShiftDesk control plane", version="0.1.0", lifespan=lifespan,
                  description="Golden images, desktop pools and desktops. Every change is audited.")
    app.state.ctx = ctx
    app.state.settings = settings
    app.state.reconciler = reconciler
    errors.install(app)
    for router in (auth.router, me.router, images.router, pools.router, desktops.router, policies.router,
                   audit.router, schedules.router, rosters.router, sessions.router, hosts.router):
        app.include_router(router)

    portal.install(app, settings.api.agents_dir)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "not ready, with the reasons"}})
    def readyz() -> JSONResponse:
        """Ready for traffic: the database answers and the reconciler (if this process runs one) is alive."""
        problems = health.problems(ctx, reconciler_alive=None if reconciler is None else _alive(app))
        return JSONResponse({"status": "ok" if not problems else "unavailable", "problems": problems},
                            status_code=503 if problems else 200)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics() -> Response:
        """Prometheus text format (services/telemetry.py)."""
        return Response(telemetry.exposition(ctx, settings.gateway.watchdog_period_s), media_type=CONTENT_TYPE_LATEST)

    return app


def _alive(app: FastAPI) -> bool:
    thread = getattr(app.state, "reconciler_thread", None)
    return thread is not None and thread.is_alive()
