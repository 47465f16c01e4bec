"""A token bucket: RATE units per second sustained, BURST at once, on a clock the caller gives.

One shape for every bound on what an untrusted peer may send: the gateway paces a browser's
bytes with it, the host channel bounds a guest's messages and bytes."""

from __future__ import annotations

from collections.abc import Callable


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: Callable[[], float]) -> None:
        self.rate, self.burst, self._now = rate, burst, now
        self.tokens, self.at = burst, now()

    def delay(self, n: float) -> float:
        """Take N units; how long the taker should wait before using them (0: within its rate).

        A pacer sleeps that long (TCP then pushes back on the peer); a guard treats anything
        above 0 as a flood."""
        t = self._now()
        self.tokens = min(self.burst, self.tokens + (t - self.at) * self.rate) - n
        self.at = t
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
