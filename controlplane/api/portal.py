"""Serving the agents' portal and the admins' console: static files with strict headers.

Every response carries `Cache-Control: no-store` (nothing of a session stays in the browser's
cache) and, for the portal, a CSP that only allows our own scripts and connections, plus a
Permissions-Policy that denies clipboard access outright, so even a compromised page script
cannot read the agent's clipboard or write the desktop's into it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Permissions-Policy": "clipboard-read=(), clipboard-write=(), camera=(), microphone=(), geolocation=(), usb=()",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response (a header the response sets itself is kept).
    Plain ASGI, not Starlette's BaseHTTPMiddleware: that one runs each request's endpoint in a
    task of its own with memory streams between, on every request the API serves."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        https = scope.get("scheme") == "https"

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if https:
                    headers.setdefault("Strict-Transport-Security", "max-age=31536000")
            await send(message)

        await self.app(scope, receive, with_headers)


def install(app: FastAPI, agents_dir: Path) -> None:
    app.add_middleware(SecurityHeaders)
    novnc = agents_dir / "node_modules" / "@novnc" / "novnc"
    if novnc.is_dir():
        app.mount("/portal/novnc", StaticFiles(directory=novnc), name="novnc")
    app.mount("/portal", StaticFiles(directory=agents_dir / "portal", html=True), name="portal")
    app.mount("/console", StaticFiles(directory=Path(__file__).parents[1] / "web" / "console", html=True),
              name="console")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/portal/")
