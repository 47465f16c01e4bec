import struct

import pytest

from controlplane.domain.rfb.handshake import (
    DESKTOP_NAME,
    TRUE_COLOUR,
    VERSION,
    BrowserHandshake,
    ServerInit,
    UpstreamHandshake,
)
from controlplane.domain.rfb.stream import FilterClosed


def qemu_server_init(w=720, h=400, name=b"QEMU (sd-main-sales-0a1b2c)"):
    return struct.pack(">HH", w, h) + TRUE_COLOUR + struct.pack(">I", len(name)) + name


def test_upstream_handshake_security_none_exclusive():
    hs = UpstreamHandshake()
    assert hs.feed(b"RFB 003.008\n") == VERSION
    assert hs.feed(b"\x02\x02\x01") == b"\x01"  # offered VNC auth and None: None chosen
    assert hs.feed(b"\0\0\0\0") == b"\x00"  # ClientInit: exclusive
    reply = hs.feed(qemu_server_init())
    assert reply == b"\0\0\0\0" + TRUE_COLOUR  # one pixel format for the session, set up front
    assert hs.result == ServerInit(720, 400, TRUE_COLOUR, b"QEMU (sd-main-sales-0a1b2c)")


@pytest.mark.parametrize("script,match", [
    ([b"HTTP/1.1 200\n"], "not an RFB server"),
    ([b"RFB 003.008\n", b"\x01\x02"], "no usable security"),
    ([b"RFB 003.008\n", b"\x00\x00\x00\x00\x04nope"], "refused"),
    ([b"RFB 003.008\n", b"\x01\x01", b"\0\0\0\x01"], "security handshake failed"),
    ([b"RFB 003.008\n", b"\x01\x01", b"\0\0\0\0", struct.pack(">HH", 9000, 10)], "out of bounds"),
    ([b"RFB 003.008\n", b"\x01\x01", b"\0\0\0\0", struct.pack(">HH", 10, 10) + TRUE_COLOUR + b"\xff\xff\xff\xff"],
     "name of"),
])
def test_upstream_refusals(script, match):
    hs = UpstreamHandshake()
    with pytest.raises(FilterClosed, match=match):
        for chunk in script:
            hs.feed(chunk)
        hs.feed(b"\0" * 64)


def test_browser_handshake_hides_the_vm_name_and_offers_only_none():
    hs = BrowserHandshake(ServerInit(720, 400, TRUE_COLOUR, b"QEMU (<img src=x onerror=alert(1)>)"))
    assert hs.greeting() == VERSION
    assert hs.feed(VERSION) == b"\x01\x01"
    assert hs.feed(b"\x01") == b"\0\0\0\0"
    init = hs.feed(b"\x01")  # asks for shared: ignored (and recorded)
    assert init == struct.pack(">HH", 720, 400) + TRUE_COLOUR + struct.pack(">I", len(DESKTOP_NAME)) + DESKTOP_NAME
    assert hs.done and any(e.kind == "shared_flag_rewritten" for e in hs.stream.events)
    assert b"onerror" not in init


@pytest.mark.parametrize("version,choice", [(b"RFB 003.003\n", b"\x01"), (VERSION, b"\x02"), (VERSION, b"\x10")])
def test_browser_refusals(version, choice):
    hs = BrowserHandshake(ServerInit(10, 10, TRUE_COLOUR, b""))
    with pytest.raises(FilterClosed):
        hs.feed(version)
        hs.feed(choice)
