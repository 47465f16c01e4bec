"""A minimal RFB 3.8 client for tests: handshake with security None, one full framebuffer update."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass


@dataclass
class Frame:
    width: int
    height: int
    name: str
    pixels: bytes


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"RFB peer closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def grab_frame(path: str, timeout: float = 10.0) -> Frame:
    """Connect to a VNC Unix socket, negotiate RFB 3.8 and read one raw full-screen update."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        version = _read(sock, 12)
        assert version.startswith(b"RFB 003."), version
        sock.sendall(b"RFB 003.008\n")
        count = _read(sock, 1)[0]
        types = _read(sock, count)
        assert 1 in types, f"security None not offered: {list(types)}"
        sock.sendall(bytes([1]))
        assert struct.unpack(">I", _read(sock, 4))[0] == 0, "security handshake failed"
        sock.sendall(bytes([1]))  # ClientInit: shared
        width, height = struct.unpack(">HH", _read(sock, 4))
        pixfmt = _read(sock, 16)
        name = _read(sock, struct.unpack(">I", _read(sock, 4))[0]).decode(errors="replace")
        bpp = pixfmt[0] // 8
        sock.sendall(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        sock.sendall(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
        while True:
            msg = _read(sock, 1)[0]
            if msg == 0:
                break
            if msg == 2:  # bell
                continue
            raise AssertionError(f"unexpected server message {msg}")
        _read(sock, 1)
        (nrects,) = struct.unpack(">H", _read(sock, 2))
        pixels = bytearray(b"\0" * (width * height * bpp))
        for _ in range(nrects):
            x, y, w, h, enc = struct.unpack(">HHHHi", _read(sock, 12))
            if enc == -223:  # DesktopSize pseudo-rectangle
                continue
            assert enc == 0, f"expected raw rectangles, got encoding {enc}"
            data = _read(sock, w * h * bpp)
            for row in range(h):
                start = ((y + row) * width + x) * bpp
                pixels[start:start + w * bpp] = data[row * w * bpp:(row + 1) * w * bpp]
        return Frame(width=width, height=height, name=name, pixels=bytes(pixels))
