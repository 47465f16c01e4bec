"""Desktop lifecycle: the states a desktop moves through and which moves are allowed.

provisioning -> ready -> in_use -> draining -> deleting, and failed (with a reason) from
provisioning. The reconciler only ever moves a desktop along an allowed edge, so a bug shows
up as a refused transition instead of a desktop in a state nobody expects.
"""

from __future__ import annotations

from enum import StrEnum


class DesktopState(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    IN_USE = "in_use"
    DRAINING = "draining"
    DELETING = "deleting"
    FAILED = "failed"


S = DesktopState

ALLOWED: dict[DesktopState, frozenset[DesktopState]] = {
    S.PROVISIONING: frozenset({S.READY, S.FAILED, S.DELETING}),
    S.READY: frozenset({S.IN_USE, S.PROVISIONING, S.DELETING}),
    S.IN_USE: frozenset({S.READY, S.DRAINING, S.PROVISIONING, S.DELETING}),
    S.DRAINING: frozenset({S.DELETING, S.IN_USE}),
    S.DELETING: frozenset(),
    S.FAILED: frozenset({S.DELETING, S.PROVISIONING}),
}

# Desktops that count towards a pool's size: they exist or are on their way.
ACTIVE = frozenset({S.PROVISIONING, S.READY, S.IN_USE})


class TransitionRefused(ValueError):
    pass


def check_transition(current: DesktopState, new: DesktopState) -> None:
    """Raise TransitionRefused unless current -> new is an edge of the lifecycle."""
    if new != current and new not in ALLOWED[current]:
        raise TransitionRefused(f"desktop state: {current} -> {new} is not allowed")
