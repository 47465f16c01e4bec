"""Incremental byte parsing with generators: the parser asks for N bytes and is resumed when
they have arrived, whatever way the input was chunked (a header split mid-field, several
messages in one frame). Large payloads that pass unchanged are streamed, never buffered whole,
so the memory a session holds is bounded by the largest *header*, not by the framebuffer.
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
    kind: str  # e.g. "clipboard_dropped", "encodings_rewritten", "closed"
    detail: dict[str, Any] = field(default_factory=dict)


class Stream:
    """One direction: feed() bytes in, get the bytes to forward; events accumulate."""

    def __init__(self, program: Callable[[Stream], Parser]) -> None:
        self.buf = bytearray()
        self.out = bytearray()
        self.events: list[Event] = []
        self.closed: str | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._gen = program(self)
        self._resume()

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
        self.events.append(Event("closed", {"reason": reason}))
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
        self.events.append(Event(kind, detail))
