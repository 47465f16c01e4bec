"""Builders for RFB messages, and an independent reference parser, for the filter's tests."""

from __future__ import annotations

import struct

from controlplane.domain.rfb.handshake import TRUE_COLOUR


def key(down=1, keysym=0x61):
    return struct.pack(">BBxxI", 4, down, keysym)


def pointer(mask=0, x=10, y=10):
    return struct.pack(">BBHH", 5, mask, x, y)


def cut_text(text=b"secret", kind=6, extended=False):
    n = -len(text) if extended else len(text)
    return struct.pack(">Bxxxi", kind, n) + text


def set_encodings(*encodings):
    return struct.pack(">BxH", 2, len(encodings)) + struct.pack(f">{len(encodings)}i", *encodings)


def update_request(x=0, y=0, w=64, h=48, incremental=0):
    return struct.pack(">BBHHHH", 3, incremental, x, y, w, h)


def set_pixel_format(bpp=32, depth=24, true_colour=1):
    fmt = bytearray(TRUE_COLOUR)
    fmt[0], fmt[1], fmt[3] = bpp, depth, true_colour
    return b"\x00\x00\x00\x00" + bytes(fmt)


def fb_update(*rects):
    return struct.pack(">BxH", 0, len(rects)) + b"".join(rects)


def rect(x, y, w, h, encoding, payload=b""):
    return struct.pack(">HHHHi", x, y, w, h, encoding) + payload


def raw_rect(x=0, y=0, w=4, h=2, bpp=4, fill=0x7F):
    return rect(x, y, w, h, 0, bytes([fill]) * (w * h * bpp))


def compact(n):
    out = [n & 0x7F]
    if n > 0x7F:
        out[0] |= 0x80
        out.append((n >> 7) & 0x7F)
        if n > 0x3FFF:
            out[1] |= 0x80
            out.append((n >> 14) & 0xFF)
    return bytes(out)


CLIENT_SIZES = {0: 20, 3: 10, 4: 8, 5: 6}


def parse_client(data: bytes) -> list[int]:
    """Message types in a client->server stream; raises on anything malformed."""
    types, i = [], 0
    while i < len(data):
        t = data[i]
        if t in CLIENT_SIZES:
            size = CLIENT_SIZES[t]
        elif t == 2:
            (n,) = struct.unpack(">H", data[i + 2:i + 4])
            size = 4 + 4 * n
        elif t == 255 and data[i + 1] == 0:
            size = 12
        elif t == 251:
            size = 8 + 16 * data[i + 6]
        else:
            raise ValueError(f"type {t}")
        if i + size > len(data):
            raise ValueError("truncated")
        types.append(t)
        i += size
    return types


def parse_server_raw(data: bytes, bpp=4) -> list[tuple[int, int]]:
    """(type, encoding) pairs of a server stream using Raw/CopyRect/DesktopSize only.

    A stream may end inside a message (the rest has not arrived yet); anything else that does
    not parse raises ValueError."""
    out, i = [], 0
    while i < len(data):
        t = data[i]
        if t == 2:
            out.append((2, 0))
            i += 1
            continue
        if t != 0:
            raise ValueError(f"type {t}")
        if i + 4 > len(data):
            return out
        (n,) = struct.unpack(">H", data[i + 2:i + 4])
        i += 4
        for _ in range(n):
            if i + 12 > len(data):
                return out
            x, y, w, h, e = struct.unpack(">HHHHi", data[i:i + 12])
            if e not in (0, 1, -223):
                raise ValueError(f"encoding {e}")
            i += 12 + {0: w * h * bpp, 1: 4}.get(e, 0)
            out.append((0, e))
    return out
