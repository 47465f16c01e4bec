"""The one place where errors become HTTP responses."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from controlplane.errors import ExpectedError, PermanentError, TemporaryError, Throttled

log = logging.getLogger(__name__)


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(ExpectedError)
    async def expected(_req: Request, err: ExpectedError) -> JSONResponse:
        body: dict = {"detail": str(err), "field": err.field}
        if hasattr(err, "errors"):  # policy files: every problem with file, line and field
            body["errors"] = [e.__dict__ for e in err.errors]
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        if isinstance(err, Throttled):
            headers = {"Retry-After": str(err.retry_after)}
        return JSONResponse(body, status_code=err.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_req: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": ("body",), "msg": "invalid"}
        field = _field_of(tuple(first.get("loc", ())))
        return JSONResponse({"detail": f"{field}: {first.get('msg')}", "field": field,
                             "errors": [{"field": _field_of(tuple(e.get("loc", ()))), "msg": e.get("msg")}
                                        for e in err.errors()]}, status_code=422)

    @app.exception_handler(TemporaryError)
    async def temporary(_req: Request, err: TemporaryError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(int(err.delay) or 1)})

    @app.exception_handler(PermanentError)
    async def permanent(_req: Request, err: PermanentError) -> JSONResponse:
        log.error("request failed: %s", err)
        return JSONResponse({"detail": str(err)}, status_code=502)
