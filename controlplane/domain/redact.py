"""Secrets out of log lines: whatever a log message carries, these never reach a log.

Connect tickets (`ticket=` in gateway URLs), API session tokens (`<base64 JSON>.<base64 MAC>`,
also in `Authorization: Bearer` and the session cookie) and anything labelled as a password,
secret or token are replaced by `[redacted]`. Applied to every record and every formatted
traceback by the log setup in main.py, for text and JSON logs alike: a defence behind the rule
that code does not log secrets in the first place.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
_RULES = (
    # key=value, key: value, "key": "value" for labels that name secrets
    (re.compile(r"""(?i)(?<![a-z0-9])((?:bind_)?password|passwd|secret|token|ticket|join_secret)(\\?["']?\s*[:=]\s*\\?["']?)"""
                r"""[^\s"'\\,&;}]+"""), rf"\1\2{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',;]+"), rf"\1{REDACTED}"),
    # an API session token anywhere (payload is base64 of a JSON object: it starts with eyJ)
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}"), REDACTED),
)


def redact(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
