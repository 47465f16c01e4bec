"""Why a display session ended, and what follows from it.

The gateway, the audit log and the portal all need the same answers: was the end clean (the
agent or a rule ended it) or a drop, and must the agent sign in again before resuming? A rule
that ends a session (idle, maximum length, an admin, a revoked or disabled account) would mean
nothing if the portal's auto-reconnect could resume it with the same sign-in.
"""

from __future__ import annotations

from enum import StrEnum


class EndReason(StrEnum):
    BROWSER_CLOSED = "browser closed"
    DESKTOP_CLOSED = "desktop closed"
    IDLE = "idle timeout"
    MAX_LENGTH = "maximum session length"
    ADMIN = "disconnected by an admin"
    TAKEN_AWAY = "desktop no longer assigned"
    QUARANTINED = "desktop stopped by a security check"  # its guest was quarantined; a fresh one awaits
    HOST_FAILED = "the desktop's host failed"  # its host was fenced; a fresh desktop awaits on another
    SHIFT_OVER = "log-off time reached"
    SIGN_IN_REVOKED = "sign-in revoked"
    ACCOUNT_DISABLED = "account disabled or gone in the directory"
    NOT_ENTITLED = "no longer entitled to the pool"
    SHUTDOWN = "control plane shutting down"

    @property
    def clean(self) -> bool:
        """Ended on purpose (by the agent, a rule or an admin), not dropped."""
        return self is not EndReason.SHUTDOWN

    @property
    def needs_sign_in(self) -> bool:
        """Resuming requires a new sign-in: the rule must survive the portal's auto-reconnect."""
        return self in NEEDS_SIGN_IN


NEEDS_SIGN_IN = frozenset({EndReason.IDLE, EndReason.MAX_LENGTH, EndReason.ADMIN, EndReason.SIGN_IN_REVOKED,
                           EndReason.ACCOUNT_DISABLED, EndReason.NOT_ENTITLED})
