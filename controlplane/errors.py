"""Errors that say what to do next.

- `TemporaryError(delay)`: back off `delay` seconds and retry; the world may fix itself.
- `PermanentError`: retrying will not help; mark the object failed with the reason.
- `ExpectedError` and its children: the caller's mistake. Mapped to 4xx in exactly one place
  (`api/errors.py`) and never logged as a server fault.
"""

from __future__ import annotations


class ShiftDeskError(Exception):
    """Base of every error ShiftDesk raises on purpose."""


class TemporaryError(ShiftDeskError):
    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(ShiftDeskError):
    pass


class HostAgentUnreachable(TemporaryError):
    """A host's libvirt may answer, but its host agent (which keeps the host's files and relays
    its consoles) does not. Never a reason to fence the host: its desktops may still run there."""


class ExpectedError(ShiftDeskError):
    """A caller mistake; `field` names the input at fault when there is one."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidInput(ExpectedError):
    status = 422


class NotFound(ExpectedError):
    status = 404


class Conflict(ExpectedError):
    status = 409


class AuthFailed(ExpectedError):
    """Login refused. The message is the same whatever the cause (no account enumeration);
    `reason` says the cause for the audit log only."""

    status = 401

    def __init__(self, reason: str) -> None:
        super().__init__("invalid username or password", field="credentials")
        self.reason = reason


class Forbidden(ExpectedError):
    status = 403


class Throttled(ExpectedError):
    """Refused before trying (too many recent failures): come back after `retry_after` seconds.
    The message is the same whoever the user is, known or not."""

    status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed sign-ins; try again later", field="credentials")
        self.retry_after = max(1, retry_after)
