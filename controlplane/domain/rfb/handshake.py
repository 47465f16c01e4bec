"""The two RFB handshakes the gateway performs, as sans-IO programs.

Upstream (gateway -> QEMU): the gateway is the client. It accepts only security type None
(VNC over a root-only Unix socket), asks for the policy's shared flag, and reads ServerInit.
Browser (gateway <- browser): the gateway is the server. It speaks RFB 3.8, offers only
security None (the connect ticket already authenticated the browser), ignores the browser's
shared flag, and sends a ServerInit whose name is a constant (the real one leaks the VM name;
CVE-2017-18635 used it for XSS) with a bounded size and a forced true-colour format.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from controlplane.domain.rfb.filter import MAX_DIMENSION
from controlplane.domain.rfb.stream import FilterClosed, Parser, Stream

VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1
DESKTOP_NAME = b"ShiftDesk desktop"
MAX_NAME = 4096
# 32 bpp, depth 24, little endian, true colour, 8-bit channels at 16/8/0: what browsers render
TRUE_COLOUR = struct.pack(">BBBBHHHBBBxxx", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


@dataclass
class ServerInit:
    width: int
    height: int
    pixel_format: bytes  # 16 bytes as the server sent them
    name: bytes


class UpstreamHandshake:
    """Feed QEMU's bytes; send `reply` bytes back to QEMU; `result` once done."""

    def __init__(self, *, shared: bool = False) -> None:
        self.shared = shared
        self.result: ServerInit | None = None
        self.stream = Stream(self._program)

    def feed(self, data: bytes) -> bytes:
        return self.stream.feed(data)

    def _program(self, s: Stream) -> Parser:
        version = yield from s.read(12)
        if not version.startswith(b"RFB 003.") or not version.endswith(b"\n"):
            raise FilterClosed(f"upstream is not an RFB server ({version!r})")
        s.emit(VERSION)
        count = (yield from s.read(1))[0]
        if count == 0:
            (size,) = struct.unpack(">I", (yield from s.read(4)))
            reason = (yield from s.read(min(size, MAX_NAME))).decode(errors="replace")
            raise FilterClosed(f"upstream refused the connection: {reason}")
        types = yield from s.read(count)
        if SECURITY_NONE not in types:
            raise FilterClosed(f"upstream offers no usable security type ({list(types)})")
        s.emit(bytes([SECURITY_NONE]))
        (status,) = struct.unpack(">I", (yield from s.read(4)))
        if status != 0:
            raise FilterClosed("upstream security handshake failed")
        s.emit(bytes([1 if self.shared else 0]))
        width, height = struct.unpack(">HH", (yield from s.read(4)))
        pixel_format = yield from s.read(16)
        (size,) = struct.unpack(">I", (yield from s.read(4)))
        if size > MAX_NAME:
            raise FilterClosed(f"upstream desktop name of {size} bytes")
        name = yield from s.read(size)
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            raise FilterClosed(f"upstream framebuffer {width}x{height} out of bounds")
        # one format for the whole session, chosen here, before any update can be in flight
        s.emit(b"\x00\x00\x00\x00" + TRUE_COLOUR)
        self.result = ServerInit(width, height, pixel_format, name)
        while True:  # the handshake is over: anything more belongs to the filter
            yield


class BrowserHandshake:
    """Feed the browser's bytes; send `reply` bytes to the browser; `done` once it may talk."""

    def __init__(self, upstream: ServerInit) -> None:
        self.upstream = upstream
        self.done = False
        self.stream = Stream(self._program)

    def greeting(self) -> bytes:
        """What the gateway says first (the server speaks first in RFB)."""
        return VERSION

    def feed(self, data: bytes) -> bytes:
        return self.stream.feed(data)

    def _program(self, s: Stream) -> Parser:
        version = yield from s.read(12)
        if version != VERSION:
            raise FilterClosed(f"browser must speak RFB 3.8, said {version[:12]!r}")
        s.emit(bytes([1, SECURITY_NONE]))
        choice = (yield from s.read(1))[0]
        if choice != SECURITY_NONE:
            raise FilterClosed(f"browser chose security type {choice}")
        s.emit(struct.pack(">I", 0))
        shared = (yield from s.read(1))[0]
        if shared:
            s.event("shared_flag_rewritten", asked=shared)
        s.emit(struct.pack(">HH", self.upstream.width, self.upstream.height) + TRUE_COLOUR
               + struct.pack(">I", len(DESKTOP_NAME)) + DESKTOP_NAME)
        self.done = True
        while True:
            yield

