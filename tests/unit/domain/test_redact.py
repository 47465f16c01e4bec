"""Secrets never reach a log line: tickets, session tokens, passwords, in every spelling seen."""

from __future__ import annotations

import pytest

from controlplane.domain.redact import redact

TOKEN = "eyJleHAiOjE3OTU2ODAzMjAsImdyb3VwcyI6W119.dGhpcyBpcyBhIG1hYyBvZiAzMiBieXRlcw"


@pytest.mark.parametrize("line,secret", [
    ("GET /gateway?ticket=96lxwE18K0PrbOBXoPgFtZUE2YbRPI3wg2Omh6Sqx9s HTTP/1.1", "96lxwE18K0Prb"),
    ("GET /gateway?a=1&ticket=abc-DEF_123&b=2", "abc-DEF_123"),
    ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
    (f"cookie sd_session={TOKEN}", TOKEN[:20]),
    (f"token {TOKEN} refused", TOKEN[:20]),
    ("bind failed: {'password': 'Hunter2-xyz'}", "Hunter2-xyz"),
    ('{"bind_password": "Hunter2-xyz", "user": "svc"}', "Hunter2-xyz"),
    ('{\\"password\\": \\"Hunter2-xyz\\"}', "Hunter2-xyz"),  # JSON inside a JSON string
    ("SHIFTDESK_LDAP__BIND_PASSWORD=Hunter2-xyz", "Hunter2-xyz"),
    ("join_secret=s3cr3t-value", "s3cr3t-value"),
])
def test_secrets_are_redacted(line, secret):
    out = redact(line)
    assert secret not in out and "[redacted]" in out


@pytest.mark.parametrize("line", [
    "pool sales: 3 desktops ready",
    "token_ttl_s=900 tokens issued: 4",
    "reconcile pass took 0.21 s",
])
def test_ordinary_lines_are_kept(line):
    assert redact(line) == line
