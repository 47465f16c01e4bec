"""Incremental byte parsing with generators: the parser asks for N bytes and is resumed when
they have arrived, whatever way the input was chunked (a header split mid-field, several
messages in one frame). Large payloads that pass unchanged are streamed, never buffered whole,
so the memory a session holds is bounded by the largest *header*, not by the framebuffer.

What a parser drops is counted, not recorded one by one: a hostile peer can send a million tiny
messages the filter discards, and the session must still cost O(1) memory and at most one audit
row per kind. Past a violation budget the session is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

Parser = Generator[None, None, None]
MAX_READ = 64 * 1024  # the biggest piece ever held at once (headers, small payloads)


class FilterClosed(Exception):
    """The session must end: the peer sent something we cannot or will not pass."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Event:
    """What happened of one kind in one direction of a session, aggregated: how often, how many
    bytes, and the details of the first occurrence (e.g. "clipboard_dropped", "closed")."""

    kind: str
    detail: dict[str, Any] = field(default_factory=dict)
    count: int = 1
    bytes: int = 0

    def summary(self) -> dict[str, Any]:
        return {**self.detail, "count": self.count, "bytes": self.bytes}


class Stream:
    """One direction: feed() bytes in, get the bytes to forward; events are tallied by kind.

    VIOLATION_BUDGET: how many dropped messages the peer may send before the session closes
    (None: no limit). An honest viewer drops a handful (its SetEncodings asks for a few
    encodings we strip); a flood of dropped messages is an attack or a broken client."""

    def __init__(self, program: Callable[[Stream], Parser], *, violation_budget: int | None = None) -> None:
        self.buf = bytearray()
        self.out = bytearray()
        self.tally: dict[str, Event] = {}  # one entry per kind: bounded by the parser's vocabulary
        self.closed: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.violations = 0
        self.violation_budget = violation_budget
        self._gen = program(self)
        self._resume()

    @property
    def events(self) -> list[Event]:
        """The tallied events, in the order their kinds first occurred."""
        return list(self.tally.values())

    def feed(self, data: bytes) -> bytes:
        if self.closed is not None:
            raise FilterClosed(self.closed)
        self.buf += data
        self.bytes_in += len(data)
        self._resume()
        out, self.out = bytes(self.out), bytearray()
        self.bytes_out += len(out)
        return out

    def _resume(self) -> None:
        try:
            self._gen.send(None)
        except StopIteration:
            self._close("parser ended")
        except FilterClosed as err:
            self._close(err.reason)

    def _close(self, reason: str) -> None:
        self.closed = reason
        self.tally["closed"] = Event("closed", {"reason": reason})
        raise FilterClosed(reason)

    # --- helpers for parser programs (use with `yield from`) -----------------------------------

    def read(self, n: int) -> Generator[None, None, bytes]:
        if n > MAX_READ:
            raise FilterClosed(f"refusing to buffer {n} bytes")
        while len(self.buf) < n:
            yield
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def passthrough(self, n: int) -> Parser:
        """Forward N bytes as they arrive."""
        while n:
            if not self.buf:
                yield
                continue
            k = min(n, len(self.buf))
            self.out += self.buf[:k]
            del self.buf[:k]
            n -= k

    def discard(self, n: int) -> Parser:
        """Swallow N bytes as they arrive (never held)."""
        while n:
            if not self.buf:
                yield
                continue
            k = min(n, len(self.buf))
            del self.buf[:k]
            n -= k

    def emit(self, data: bytes) -> None:
        self.out += data

    def event(self, kind: str, **detail: Any) -> None:
        """Note something worth auditing that is not a violation (e.g. a rewritten flag)."""
        seen = self.tally.get(kind)
        if seen is None:
            self.tally[kind] = Event(kind, detail)
        else:
            seen.count += 1

    def dropped(self, kind: str, size: int, **detail: Any) -> None:
        """A message of SIZE bytes was dropped: tally it, and close past the violation budget."""
        self.event(kind, **detail)
        self.tally[kind].bytes += size
        self.violations += 1
        if self.violation_budget is not None and self.violations > self.violation_budget:
            raise FilterClosed(f"more than {self.violation_budget} dropped messages")
