"""Serving the agents' portal and the admins' console: static files with strict headers.

Every response carries `Cache-Control: no-store` (nothing of a session stays in the browser's
cache) and, for the portal, a CSP that only allows our own scripts and connections, plus a
Permissions-Policy that denies clipboard access outright, so even a compromised page script
cannot read the agent's clipboard or write the desktop's into it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

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


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if request.url.scheme == "https":
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


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
