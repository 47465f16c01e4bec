"""The RFB filter, message by message (shared/RFB-FILTER.md), then chunking and fuzzing."""

from __future__ import annotations

import random
import struct

import pytest

from controlplane.domain.rfb import encodings as enc
from controlplane.domain.rfb.filter import MAX_CUT_TEXT, Policy, RfbFilter
from controlplane.domain.rfb.stream import FilterClosed
from tests.unit.domain.rfb.rfbmsg import (
    compact,
    cut_text,
    fb_update,
    key,
    parse_client,
    parse_server_raw,
    pointer,
    raw_rect,
    rect,
    set_encodings,
    set_pixel_format,
    update_request,
)

W, H = 64, 48
NOVNC_ENCODINGS = [7, -260, 16, 1, 0, -32, -256, -223, -224, -239, -240, -314, -308,
                   -309, -312, -313, -307, -1063131698,
                   -259, 50, 0x574D5664, -305, -311, -257, -258, -261, -316, 5, -247]


def session(**policy):
    f = RfbFilter(W, H, Policy(**policy))
    f.from_client(set_encodings(*NOVNC_ENCODINGS))
    return f


def events(stream, kind):
    return [e for e in stream.events if e.kind == kind]


# --- client -> server ---------------------------------------------------------------------------

def test_keys_and_pointer_pass_unchanged():
    f = session()
    data = key() + key(0) + pointer(1, 5, 6) + pointer(0, 63, 47)
    assert f.from_client(data) == data


def test_set_encodings_keeps_only_the_allowlist():
    f = RfbFilter(W, H)
    out = f.from_client(set_encodings(*NOVNC_ENCODINGS))
    (n,) = struct.unpack(">H", out[2:4])
    kept = list(struct.unpack(f">{n}i", out[4:]))
    assert kept == [7, -260, 16, 1, 0, -32, -256, -223, -224, -239, -240, -314, -308, -257, -258, -261, -316, -247]
    stripped = events(f.client, "encodings_stripped")[0].detail["encodings"]
    for bad in (-309, -312, -313, -307, -1063131698, -259, 50, 0x574D5664, -305, -311, 5):
        assert bad in stripped


@pytest.mark.parametrize("extended", [False, True])
def test_client_clipboard_is_dropped_and_audited(extended):
    f = session()
    out = f.from_client(key() + cut_text(b"card 4111-1111", extended=extended) + pointer())
    assert out == key() + pointer()
    (ev,) = events(f.client, "clipboard_dropped")
    assert ev.summary() == {"direction": "client", "extended": extended, "count": 1, "bytes": 8 + 14}


AUDIO_OFF = b"\xff\x01\x00\x01"  # QEMU audio, operation "disable": 4 bytes, dropped
EMPTY_CUT = cut_text(b"")  # 8 bytes, dropped


@pytest.mark.parametrize("message", [AUDIO_OFF, EMPTY_CUT, set_encodings(-259)], ids=["audio", "cut", "encodings"])
def test_a_flood_of_dropped_messages_is_tallied_not_recorded_and_closes_past_the_budget(message):
    f = session(violation_budget=1000)
    baseline = f.client.violations
    f.from_client(message * (1000 - baseline))
    assert len(f.client.events) <= 2  # one tally per kind (encodings stripped at session start)
    kind = f.client.events[-1]
    assert kind.count >= 1000 - baseline and kind.bytes >= 4 * (1000 - baseline)
    with pytest.raises(FilterClosed, match="more than 1000 dropped messages"):
        f.from_client(message)


def test_dropped_messages_cost_constant_memory():
    f = session(violation_budget=None)
    f.from_client(AUDIO_OFF * 1000)
    before = sum(len(e.detail) for e in f.client.events), len(f.client.events)
    f.from_client(AUDIO_OFF * 100_000)
    assert (sum(len(e.detail) for e in f.client.events), len(f.client.events)) == before
    assert f.client.tally["audio_dropped"].count == 101_000


def test_a_pointer_event_that_changes_nothing_is_not_activity_nor_forwarded():
    f = session()
    assert f.from_client(pointer(0, 5, 5)) == pointer(0, 5, 5)
    assert f.state.inputs == 1
    assert f.from_client(pointer(0, 5, 5) * 50) == b""  # a jiggler that does not move: idle, and not forwarded
    assert f.state.inputs == 1
    f.from_client(pointer(0, 6, 5) + pointer(1, 6, 5) + key())
    assert f.state.inputs == 4


def test_huge_cut_text_closes_without_buffering():
    f = session()
    with pytest.raises(FilterClosed, match="cut text"):
        f.from_client(struct.pack(">Bxxxi", 6, MAX_CUT_TEXT + 1))
    with pytest.raises(FilterClosed):
        f.from_client(key())  # a closed session stays closed


@pytest.mark.parametrize("kind", [1, 7, 8, 9, 10, 11, 12, 13, 80, 127, 128, 130, 136, 150, 248, 249, 250, 252,
                                  253, 254])
def test_unknown_or_unneeded_client_types_close(kind):
    f = session()
    with pytest.raises(FilterClosed, match=f"type {kind}"):
        f.from_client(bytes([kind]) + b"\0" * 32)


def test_update_request_is_clamped_to_the_framebuffer():
    f = session()
    out = f.from_client(update_request(60, 40, 500, 500, 1))
    assert struct.unpack(">BBHHHH", out) == (3, 1, 60, 40, 4, 8)


def test_pixel_format_true_colour_only_and_only_before_updates():
    assert RfbFilter(W, H).from_client(set_pixel_format(16, 16)) == set_pixel_format(16, 16)
    with pytest.raises(FilterClosed, match="true colour"):
        RfbFilter(W, H).from_client(set_pixel_format(true_colour=0))
    with pytest.raises(FilterClosed):
        RfbFilter(W, H).from_client(set_pixel_format(24, 24))
    f = session()
    f.from_client(update_request())
    with pytest.raises(FilterClosed, match="after updates"):
        f.from_client(set_pixel_format())


def test_set_desktop_size_dropped_by_default_allowed_by_policy():
    msg = struct.pack(">BxHHBx", 251, 800, 600, 1) + b"\0" * 16
    f = session()
    assert f.from_client(msg) == b"" and events(f.client, "resize_dropped")
    assert session(allow_resize=True).from_client(msg) == msg


def test_qemu_client_messages():
    ext_key = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)
    assert session().from_client(ext_key) == ext_key
    with pytest.raises(FilterClosed):
        RfbFilter(W, H).from_client(set_encodings(0) + ext_key)  # not negotiated
    f = session()
    assert f.from_client(struct.pack(">BBH", 255, 1, 0) + struct.pack(">BBHBBI", 255, 1, 2, 3, 2, 44100)) == b""
    assert events(f.client, "audio_dropped")[0].count == 2
    with pytest.raises(FilterClosed):
        session().from_client(b"\xff\x07")


# --- server -> client ---------------------------------------------------------------------------

def test_raw_update_and_bell_pass():
    f = session()
    data = fb_update(raw_rect(), raw_rect(10, 10, 3, 3)) + b"\x02"
    assert f.from_server(data) == data


def test_server_clipboard_dropped_with_alert():
    f = session()
    out = f.from_server(b"\x02" + cut_text(b"customer data", kind=3) + b"\x02")
    assert out == b"\x02\x02"
    assert events(f.server, "clipboard_dropped") and events(f.server, "alert")


@pytest.mark.parametrize("kind", [1, 4, 5, 11, 127, 128, 150, 173, 248, 250, 252, 255])
def test_unknown_server_types_close(kind):
    with pytest.raises(FilterClosed):
        session().from_server(bytes([kind]) + b"\0" * 16)


def test_not_negotiated_encoding_closes():
    f = RfbFilter(W, H)
    f.from_client(set_encodings(0))
    with pytest.raises(FilterClosed, match="not negotiated"):
        f.from_server(fb_update(rect(0, 0, 4, 4, enc.ZRLE, b"\0\0\0\0")))


@pytest.mark.parametrize("x,y,w,h", [(60, 0, 5, 1), (0, 47, 1, 2), (65535, 0, 1, 1)])
def test_rectangles_outside_the_framebuffer_close(x, y, w, h):
    with pytest.raises(FilterClosed, match="outside"):
        session().from_server(fb_update(rect(x, y, w, h, 0)))


def test_desktop_size_changes_the_bounds():
    f = session()
    f.from_server(fb_update(rect(0, 0, 128, 96, enc.DESKTOP_SIZE)))
    assert f.from_server(fb_update(raw_rect(100, 90, 2, 2)))
    with pytest.raises(FilterClosed):
        session().from_server(fb_update(rect(0, 0, 9000, 10, enc.DESKTOP_SIZE)))


def test_tight_variants():
    f = session()
    fill = rect(0, 0, 8, 8, enc.TIGHT, b"\x80" + b"\x01\x02\x03")
    jpeg = rect(0, 0, 8, 8, enc.TIGHT, b"\x90" + compact(300) + b"j" * 300)
    small = rect(0, 0, 1, 2, enc.TIGHT, b"\x00" + b"\x05" * 6)  # copy filter, < 12 bytes: raw
    basic = rect(0, 0, 8, 8, enc.TIGHT, b"\x00" + compact(20) + b"z" * 20)
    palette = rect(0, 0, 8, 8, enc.TIGHT, b"\x40\x01\x01" + b"\xaa" * 6 + b"\x55" * 8)  # 1 bit/px: 8 bytes raw
    data = fb_update(fill, jpeg, small, basic, palette)
    assert f.from_server(data) == data
    png = rect(0, 0, 8, 8, enc.TIGHT_PNG, b"\xa0" + compact(5) + b"p" * 5)
    assert f.from_server(fb_update(png)) == fb_update(png)
    with pytest.raises(FilterClosed):
        session().from_server(fb_update(rect(0, 0, 8, 8, enc.TIGHT, b"\xa0" + compact(5) + b"p" * 5)))
    big = session()
    big.from_server(fb_update(rect(0, 0, 8, 8, enc.TIGHT, b"\x90\xff\xff\xff")))  # ~4 MiB, Tight's maximum
    assert big.server.closed is None and len(big.server.buf) == 0  # streamed as it comes, never held
    with pytest.raises(FilterClosed, match="Tight filter"):
        session().from_server(fb_update(rect(0, 0, 8, 8, enc.TIGHT, b"\x40\x07")))


def test_zrle_cursor_and_pseudo_rectangles():
    f = session()
    zrle = rect(0, 0, 8, 8, enc.ZRLE, struct.pack(">I", 10) + b"z" * 10)
    cursor = rect(0, 0, 8, 2, enc.CURSOR, b"c" * (8 * 2 * 4 + 1 * 2))
    xcursor = rect(0, 0, 8, 2, enc.X_CURSOR, b"x" * (6 + 2 * 2))
    led = rect(0, 0, 0, 0, enc.QEMU_LED, b"\x01")
    ext = rect(0, 0, W, H, enc.EXTENDED_DESKTOP_SIZE, b"\x01\0\0\0" + b"s" * 16)
    alpha = rect(0, 0, 2, 2, enc.ALPHA_CURSOR, struct.pack(">i", 0) + b"a" * 16)
    data = fb_update(zrle, cursor, xcursor, led, ext, alpha, rect(0, 0, 0, 0, enc.QEMU_EXTENDED_KEY))
    assert f.from_server(data) == data
    last = fb_update(raw_rect(), rect(0, 0, 0, 0, enc.LAST_RECT))
    last = last[:2] + b"\xff\xff" + last[4:]  # "many" rectangles, ended by LastRect
    assert f.from_server(last + b"\x02") == last + b"\x02"
    with pytest.raises(FilterClosed, match="too large"):
        session().from_server(fb_update(rect(0, 0, 1000, 1000, enc.CURSOR)))
    with pytest.raises(FilterClosed, match="ZRLE payload"):
        session().from_server(fb_update(rect(0, 0, 8, 8, enc.ZRLE, b"\xff\xff\xff\xff")))


def test_big_raw_rectangle_is_streamed_not_buffered():
    f = RfbFilter(4096, 2048)
    f.from_client(set_encodings(0))
    head = fb_update(rect(0, 0, 4096, 2048, 0))
    forwarded = len(f.from_server(head))
    chunk = b"\x11" * 65536
    for _ in range(32):
        forwarded += len(f.from_server(chunk))
        assert len(f.server.buf) == 0  # nothing accumulates
    assert forwarded == len(head) + 32 * 65536


# --- chunking and fuzzing -----------------------------------------------------------------------

def recorded_client() -> bytes:
    return (set_pixel_format() + set_encodings(*NOVNC_ENCODINGS) + update_request() + key() + key(0)
            + pointer(1) + cut_text(b"paste me") + pointer(0) + update_request(incremental=1)
            + cut_text(b"x" * 300, extended=True) + key())


def recorded_server() -> bytes:
    return (fb_update(raw_rect(), raw_rect(8, 8, 16, 4), rect(0, 0, 4, 4, 1, b"\0\x04\0\x04")) + b"\x02"
            + cut_text(b"from the guest", kind=3) + fb_update(raw_rect(0, 0, 64, 1)) + b"\x02")


def run(feed, data: bytes, sizes) -> tuple[bytes, list]:
    out, i = bytearray(), 0
    for n in sizes:
        out += feed(data[i:i + n])
        i += n
    out += feed(data[i:])
    return bytes(out)


@pytest.mark.parametrize("seed", range(40))
def test_random_chunking_gives_identical_output(seed):
    rnd = random.Random(seed)
    for recorded, side in ((recorded_client(), "client"), (recorded_server(), "server")):
        whole_f, chunked_f = session(), session()
        whole = getattr(whole_f, f"from_{side}")(recorded)
        sizes = [rnd.choice([1, 1, 2, 3, 7, 12, 50, 500]) for _ in range(len(recorded))]
        chunked = run(getattr(chunked_f, f"from_{side}"), recorded, sizes)
        assert chunked == whole
        stream = getattr(chunked_f, side)
        assert [e.kind for e in stream.events] == [e.kind for e in getattr(whole_f, side).events]


@pytest.mark.parametrize("seed", range(300))
def test_mutated_sessions_never_leak_anything_but_allowed_messages(seed):
    rnd = random.Random(seed)
    for recorded, side in ((recorded_client(), "client"), (recorded_server(), "server")):
        data = bytearray(recorded)
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(data))
            data[pos] = rnd.choice([0, 1, 2, 3, 6, 7, 0x7F, 0x80, 0xFE, 0xFF, rnd.randrange(256)])
        f = session()
        if side == "server":  # the reference parser knows these three; the filter must hold to them
            f = RfbFilter(W, H)
            f.from_client(set_encodings(0, 1, -223))
        out = bytearray()
        try:
            for i in range(0, len(data), 5):
                out += getattr(f, f"from_{side}")(bytes(data[i:i + 5]))
        except FilterClosed:
            pass
        if side == "client":
            types = parse_client(bytes(out))  # whole messages only: clients' messages are never streamed
            assert set(types) <= {0, 2, 3, 4, 5, 251, 255}
        else:
            msgs = parse_server_raw(bytes(out))  # raises on anything but whole allowed messages
            assert {t for t, _ in msgs} <= {0, 2}
