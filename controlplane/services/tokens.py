"""Short-lived signed API tokens: HMAC-SHA256 (cryptography) over a small JSON payload.

A token is `payload.signature`, both base64url. It names its session id (jti); the session row
is what logout and revocation change, so a token dies the moment its session is revoked, not at
its expiry. Tokens are never stored or logged: only their jti is.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, hmac

from controlplane.errors import ExpectedError


class TokenInvalid(ExpectedError):
    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__("invalid or expired session; log in again", field="authorization")
        self.reason = reason


@dataclass(frozen=True)
class Claims:
    sub: str
    role: str
    groups: tuple[str, ...]
    jti: str
    exp: int


def load_or_create_key(path: Path) -> bytes:
    """The signing key, created once with mode 0600 (32 random bytes); an older, looser file is
    tightened to 0600."""
    if path.exists():
        key = path.read_bytes()
        if len(key) < 32:
            raise ValueError(f"auth.key_file: {path} holds fewer than 32 bytes")
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return key
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, data: bytes) -> hmac.HMAC:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac


def issue(key: bytes, *, sub: str, role: str, groups: list[str], now: datetime, ttl_s: int) -> tuple[str, Claims]:
    claims = Claims(sub=sub, role=role, groups=tuple(sorted(groups)), jti=secrets.token_urlsafe(16),
                    exp=int(now.timestamp()) + ttl_s)
    payload = _b64(json.dumps(claims.__dict__, sort_keys=True).encode())
    return f"{payload}.{_b64(_mac(key, payload.encode()).finalize())}", claims


def verify(key: bytes, token: str, *, now: datetime) -> Claims:
    """Signature and expiry only; the caller checks the session row (revocation)."""
    if not isinstance(token, str) or token.count(".") != 1 or len(token) > 4096:
        raise TokenInvalid("malformed token")
    payload, signature = token.split(".")
    try:
        _mac(key, payload.encode()).verify(_unb64(signature))
        data = json.loads(_unb64(payload))
        claims = Claims(sub=str(data["sub"]), role=str(data["role"]), groups=tuple(data["groups"]),
                        jti=str(data["jti"]), exp=int(data["exp"]))
    except (InvalidSignature, ValueError, KeyError, TypeError) as err:
        raise TokenInvalid(f"bad token: {type(err).__name__}") from None
    if claims.exp <= int(now.timestamp()):
        raise TokenInvalid("expired")
    return claims
