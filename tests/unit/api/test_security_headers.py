"""Every HTTP response carries the strict headers (controlplane/api/portal.py), a response's own
value wins, and HSTS goes out over HTTPS only."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from controlplane.api.portal import SECURITY_HEADERS
from controlplane.main import create_app


@pytest.fixture(params=["http", "https"])
def client(ctx, settings, request):
    with TestClient(create_app(settings, ctx), base_url=f"{request.param}://testserver") as c:
        yield c


@pytest.mark.parametrize("path", ["/healthz", "/portal/", "/api/v1/pools", "/nowhere", "/"])
def test_every_response_carries_the_strict_headers(client, path):
    r = client.get(path, follow_redirects=False)
    for name, value in SECURITY_HEADERS.items():
        if name != "Cache-Control":
            assert r.headers[name] == value, (path, name)
    assert "no-store" in r.headers["Cache-Control"]
    https = str(client.base_url).startswith("https")
    assert ("Strict-Transport-Security" in r.headers) == https, path
    assert r.headers.get_list("Content-Security-Policy") == [SECURITY_HEADERS["Content-Security-Policy"]]


def test_a_response_that_sets_a_header_keeps_its_own(client, ctx, settings):
    app = create_app(settings, ctx)

    @app.get("/own-cache")
    def own():
        from fastapi.responses import PlainTextResponse

        return PlainTextResponse("x", headers={"Cache-Control": "private, max-age=5"})

    with TestClient(app, base_url=str(client.base_url)) as c:
        r = c.get("/own-cache")
    assert r.headers.get_list("Cache-Control") == ["private, max-age=5"]
    assert r.headers["X-Frame-Options"] == "DENY"
