"""The RFB filter for the normal phase (after both handshakes): a full state machine each way.

Client -> server: pointer, keys, update requests, pixel format and (rewritten) encodings pass;
clipboard is dropped; everything else closes the session. Server -> client: framebuffer updates
are parsed rectangle by rectangle (only negotiated encodings, every size capped and checked
against the framebuffer) and bells pass; server clipboard is dropped with an alert; anything
else closes. See shared/RFB-FILTER.md for the table this implements.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass, field

from controlplane.domain.rfb import encodings as enc
from controlplane.domain.rfb.stream import FilterClosed, Parser, Stream

MAX_CUT_TEXT = 1 << 20
MAX_ENCODINGS = 256
MAX_DIMENSION = 8192
MAX_RECTS = 65535
MAX_COMPRESSED = 64 << 20  # a single Tight/ZRLE payload


@dataclass
class PixelFormat:
    bpp: int = 32
    depth: int = 24
    big_endian: bool = False
    true_colour: bool = True
    red_max: int = 255
    green_max: int = 255
    blue_max: int = 255

    @property
    def bytes_per_pixel(self) -> int:
        return self.bpp // 8

    @property
    def tight_pixel(self) -> int:
        """Tight's TPIXEL: 3 bytes for 32 bpp, depth 24, 8-bit channels; else a full pixel."""
        if self.bpp == 32 and self.depth == 24 and self.red_max == self.green_max == self.blue_max == 255:
            return 3
        return self.bytes_per_pixel

    @classmethod
    def parse(cls, data: bytes) -> PixelFormat:
        bpp, depth, big, true_colour, rmax, gmax, bmax = struct.unpack(">BBBBHHH", data[:10])
        return cls(bpp=bpp, depth=depth, big_endian=bool(big), true_colour=bool(true_colour),
                   red_max=rmax, green_max=gmax, blue_max=bmax)


@dataclass
class Policy:
    allow_resize: bool = False  # SetDesktopSize from the browser
    max_key_events_per_s: int | None = None  # optional key-rate cap (None: no cap)
    violation_budget: int | None = 256  # dropped messages per direction before the session closes


@dataclass
class SessionState:
    width: int
    height: int
    pixel_format: PixelFormat = field(default_factory=PixelFormat)
    encodings: set[int] = field(default_factory=set)  # what the server was told it may use
    updates_requested: bool = False
    policy: Policy = field(default_factory=Policy)
    rects: Counter[int] = field(default_factory=Counter)  # forwarded rectangles by encoding
    inputs: int = 0  # keys, and pointer moves or clicks, forwarded: what "not idle" means
    last_pointer: bytes = b""  # the last PointerEvent's buttons and position


class RfbFilter:
    """Both directions of one session. Feed each side's bytes; forward what comes back."""

    def __init__(self, width: int, height: int, policy: Policy | None = None) -> None:
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            raise FilterClosed(f"framebuffer {width}x{height} out of bounds")
        self.state = SessionState(width=width, height=height, policy=policy or Policy())
        budget = self.state.policy.violation_budget
        self.client = Stream(lambda s: _client_messages(s, self.state), violation_budget=budget)
        self.server = Stream(lambda s: _server_messages(s, self.state), violation_budget=budget)

    def from_client(self, data: bytes) -> bytes:
        return self.client.feed(data)

    def from_server(self, data: bytes) -> bytes:
        return self.server.feed(data)


# --- client -> server -------------------------------------------------------------------------


def _client_messages(s: Stream, st: SessionState) -> Parser:
    while True:
        kind = (yield from s.read(1))[0]
        if kind == 0:
            yield from _set_pixel_format(s, st)
        elif kind == 2:
            yield from _set_encodings(s, st)
        elif kind == 3:
            yield from _update_request(s, st)
        elif kind == 4:
            s.emit(b"\x04" + (yield from s.read(7)))
            st.inputs += 1
        elif kind == 5:
            body = yield from s.read(5)
            if body != st.last_pointer:  # one that changes nothing carries nothing: not forwarded, not activity
                s.emit(b"\x05" + body)
                st.last_pointer, st.inputs = body, st.inputs + 1
        elif kind == 6:
            yield from _cut_text(s, "client")
        elif kind == 251:
            yield from _set_desktop_size(s, st)
        elif kind == 255:
            yield from _qemu_client(s, st)
        else:
            raise FilterClosed(f"client message type {kind} is not allowed")


def _set_pixel_format(s: Stream, st: SessionState) -> Parser:
    body = yield from s.read(19)
    fmt = PixelFormat.parse(body[3:])
    if not fmt.true_colour or fmt.bpp not in (8, 16, 32):
        raise FilterClosed(f"pixel format refused (true colour {fmt.true_colour}, {fmt.bpp} bpp)")
    if st.updates_requested:
        # updates may be in flight in the old format: their sizes could no longer be checked
        raise FilterClosed("pixel format change after updates were requested")
    st.pixel_format = fmt
    s.emit(b"\x00" + body)


def _set_encodings(s: Stream, st: SessionState) -> Parser:
    head = yield from s.read(3)
    (count,) = struct.unpack(">H", head[1:3])
    if count > MAX_ENCODINGS:
        raise FilterClosed(f"SetEncodings with {count} encodings")
    asked = list(struct.unpack(f">{count}i", (yield from s.read(4 * count))))
    kept = [e for e in asked if enc.allowed(e)]
    stripped = sorted(set(asked) - set(kept))
    if stripped:
        s.dropped("encodings_stripped", 4 * (len(asked) - len(kept)), encodings=stripped)
    st.encodings = set(kept) | {enc.RAW}  # Raw is always implied by the protocol
    s.emit(struct.pack(">BxH", 2, len(kept)) + struct.pack(f">{len(kept)}i", *kept))


def _update_request(s: Stream, st: SessionState) -> Parser:
    incremental, x, y, w, h = struct.unpack(">BHHHH", (yield from s.read(9)))
    x, y = min(x, st.width), min(y, st.height)
    w, h = min(w, st.width - x), min(h, st.height - y)
    st.updates_requested = True
    s.emit(struct.pack(">BBHHHH", 3, 1 if incremental else 0, x, y, w, h))


def _cut_text(s: Stream, side: str) -> Parser:
    head = yield from s.read(7)
    (length,) = struct.unpack(">i", head[3:7])
    size = abs(length)  # negative: extended clipboard
    if size > MAX_CUT_TEXT:
        raise FilterClosed(f"{side} cut text of {size} bytes")
    yield from s.discard(size)
    s.dropped("clipboard_dropped", 8 + size, direction=side, extended=length < 0)


def _set_desktop_size(s: Stream, st: SessionState) -> Parser:
    head = yield from s.read(7)
    w, h, screens = struct.unpack(">xHHB", head[:6])
    if screens > 16:
        raise FilterClosed(f"SetDesktopSize with {screens} screens")
    body = yield from s.read(16 * screens)
    if not st.policy.allow_resize or enc.EXTENDED_DESKTOP_SIZE not in st.encodings:
        s.dropped("resize_dropped", 8 + 16 * screens, width=w, height=h)
        return
    if not (0 < w <= MAX_DIMENSION and 0 < h <= MAX_DIMENSION):
        raise FilterClosed(f"SetDesktopSize {w}x{h} out of bounds")
    s.emit(b"\xfb" + head + body)


def _qemu_client(s: Stream, st: SessionState) -> Parser:
    sub = (yield from s.read(1))[0]
    if sub == 0:  # extended key event
        body = yield from s.read(10)
        if enc.QEMU_EXTENDED_KEY not in st.encodings:
            raise FilterClosed("QEMU extended key event without the encoding")
        s.emit(b"\xff\x00" + body)
    elif sub == 1:  # audio control: dropped (no sound ever crosses)
        (op,) = struct.unpack(">H", (yield from s.read(2)))
        if op == 2:
            yield from s.discard(6)
        elif op not in (0, 1):
            raise FilterClosed(f"QEMU audio operation {op}")
        s.dropped("audio_dropped", 10 if op == 2 else 4, operation=op)
    else:
        raise FilterClosed(f"QEMU client message subtype {sub} is not allowed")


# --- server -> client -------------------------------------------------------------------------


def _server_messages(s: Stream, st: SessionState) -> Parser:
    while True:
        kind = (yield from s.read(1))[0]
        if kind == 0:
            yield from _framebuffer_update(s, st)
        elif kind == 2:
            s.emit(b"\x02")
        elif kind == 3:
            yield from _cut_text(s, "server")
            s.event("alert", reason="the desktop sent clipboard data: it has clipboard plumbing it should not have")
        else:
            raise FilterClosed(f"server message type {kind} is not allowed")


def _framebuffer_update(s: Stream, st: SessionState) -> Parser:
    (count,) = struct.unpack(">xH", (yield from s.read(3)))
    s.emit(struct.pack(">BxH", 0, count))
    for _ in range(count):
        x, y, w, h, encoding = struct.unpack(">HHHHi", (yield from s.read(12)))
        header = struct.pack(">HHHHi", x, y, w, h, encoding)
        if encoding not in st.encodings:
            raise FilterClosed(f"server used encoding {encoding}, which was not negotiated")
        if encoding == enc.LAST_RECT:
            s.emit(header)
            return
        if encoding in enc.PIXEL and (x + w > st.width or y + h > st.height):
            raise FilterClosed(f"rectangle {w}x{h}+{x}+{y} outside the {st.width}x{st.height} framebuffer")
        s.emit(header)
        yield from _rect_payload(s, st, encoding, w, h)
        st.rects[encoding] += 1


def _rect_payload(s: Stream, st: SessionState, encoding: int, w: int, h: int) -> Parser:
    bpp = st.pixel_format.bytes_per_pixel
    if encoding == enc.RAW:
        yield from s.passthrough(w * h * bpp)
    elif encoding == enc.COPYRECT:
        src_x, src_y = struct.unpack(">HH", (yield from s.read(4)))
        if src_x + w > st.width or src_y + h > st.height:
            raise FilterClosed("CopyRect source outside the framebuffer")
        s.emit(struct.pack(">HH", src_x, src_y))
    elif encoding == enc.ZRLE:
        length = yield from _u32_capped(s, "ZRLE")
        yield from s.passthrough(length)
    elif encoding in (enc.TIGHT, enc.TIGHT_PNG):
        yield from _tight(s, st, w, h, png=encoding == enc.TIGHT_PNG)
    elif encoding == enc.DESKTOP_SIZE:
        _resize(st, w, h)
    elif encoding == enc.EXTENDED_DESKTOP_SIZE:
        head = yield from s.read(4)
        screens = head[0]
        if screens > 16:
            raise FilterClosed(f"ExtendedDesktopSize with {screens} screens")
        s.emit(head + (yield from s.read(16 * screens)))
        if w and h:
            _resize(st, w, h)
    elif encoding == enc.CURSOR:
        yield from _capped_passthrough(s, w * h * bpp + ((w + 7) // 8) * h, "cursor", w, h)
    elif encoding == enc.X_CURSOR:
        yield from _capped_passthrough(s, 6 + 2 * ((w + 7) // 8) * h if w * h else 0, "xcursor", w, h)
    elif encoding == enc.ALPHA_CURSOR:
        (inner,) = struct.unpack(">i", (yield from s.read(4)))
        if inner != enc.RAW:
            raise FilterClosed(f"alpha cursor with inner encoding {inner}")
        s.emit(struct.pack(">i", inner))
        yield from _capped_passthrough(s, w * h * 4, "alpha cursor", w, h)
    elif encoding == enc.QEMU_LED:
        s.emit((yield from s.read(1)))
    elif encoding in (enc.QEMU_POINTER_MOTION, enc.QEMU_EXTENDED_KEY, enc.EXTENDED_MOUSE_BUTTONS):
        return  # acknowledgements without payload
    else:
        raise FilterClosed(f"no parser for encoding {encoding}")


def _resize(st: SessionState, w: int, h: int) -> None:
    if not (0 < w <= MAX_DIMENSION and 0 < h <= MAX_DIMENSION):
        raise FilterClosed(f"desktop size {w}x{h} out of bounds")
    st.width, st.height = w, h


def _capped_passthrough(s: Stream, size: int, what: str, w: int, h: int) -> Parser:
    if w > 256 or h > 256:
        raise FilterClosed(f"{what} of {w}x{h} is too large")
    yield from s.passthrough(size)


def _u32_capped(s: Stream, what: str) -> Generator[None, None, int]:
    data = yield from s.read(4)
    (length,) = struct.unpack(">I", data)
    if length > MAX_COMPRESSED:
        raise FilterClosed(f"{what} payload of {length} bytes")
    s.emit(data)
    return length


def _compact_length(s: Stream) -> Generator[None, None, int]:
    """Tight's 1-3 byte length; forwarded as read."""
    value, shift = 0, 0
    for i in range(3):
        byte = (yield from s.read(1))[0]
        s.emit(bytes([byte]))
        value |= (byte & (0x7F if i < 2 else 0xFF)) << shift
        shift += 7
        if i < 2 and not byte & 0x80:
            break
    if value > MAX_COMPRESSED:
        raise FilterClosed(f"Tight payload of {value} bytes")
    return value


def _tight(s: Stream, st: SessionState, w: int, h: int, *, png: bool) -> Parser:
    control = (yield from s.read(1))[0]
    s.emit(bytes([control]))
    kind = control >> 4
    tpixel = st.pixel_format.tight_pixel
    if kind == 0x08:  # fill
        s.emit((yield from s.read(tpixel)))
    elif kind == 0x09 or kind == 0x0A and png:  # JPEG
        yield from s.passthrough((yield from _compact_length(s)))
    elif kind <= 0x07 and not png:  # basic compression
        if w > 2048:
            raise FilterClosed("Tight basic rectangle wider than 2048")
        filter_id = 0
        if kind & 0x04:
            filter_id = (yield from s.read(1))[0]
            s.emit(bytes([filter_id]))
        if filter_id == 1:  # palette
            colours = (yield from s.read(1))[0] + 1
            s.emit(bytes([colours - 1]))
            s.emit((yield from s.read(colours * tpixel)))
            row = (w + 7) // 8 if colours <= 2 else w
            raw_size = row * h
        elif filter_id == 2 or filter_id == 0:  # gradient
            raw_size = w * h * tpixel
        else:
            raise FilterClosed(f"Tight filter {filter_id}")
        if raw_size < 12:
            s.emit((yield from s.read(raw_size)))
        else:
            yield from s.passthrough((yield from _compact_length(s)))
    else:
        raise FilterClosed(f"Tight compression control {control:#x}")
