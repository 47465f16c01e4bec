"""Real QEMU output through the gateway's handshake and filter: Tight, ZRLE and Raw sessions
from a booted desktop parse to the last byte, and a key typed through the filter reaches it."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from controlplane.domain.rfb.filter import RfbFilter
from controlplane.domain.rfb.handshake import UpstreamHandshake
from controlplane.services import desktops, pools
from controlplane.services.reconciler import Reconciler


@pytest.fixture
def desktop(real_ctx, golden):
    pools.create(real_ctx, name="rfb", image="busybox-desktop", size=1, actor="test")
    rec = Reconciler(real_ctx)
    assert rec.run_until_converged(timeout=180)
    rec.close()
    (row, _), = desktops.list_all(real_ctx)
    return real_ctx.hypervisor.vnc_socket(row.name)


def connect(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(5)
    sock.connect(str(path))
    hs = UpstreamHandshake()
    while hs.result is None:
        sock.sendall(hs.feed(sock.recv(4096)))
    return sock, hs


def pump(sock, f, seconds):
    out = bytearray()
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        if not data:
            break
        out += f.from_server(data)
    return bytes(out)


def test_real_sessions_pass_the_filter(desktop):
    for encodings in ([7, -32, -256], [16], [0]):  # Tight (with JPEG hints), ZRLE, Raw: one desktop
        check_session(desktop, encodings)


def check_session(desktop, encodings):
    sock, hs = connect(desktop)
    init = hs.result
    f = RfbFilter(init.width, init.height)
    pseudo = [-223, -239, -257, -258, -261, -308]
    sock.sendall(f.from_client(struct.pack(">BxH", 2, len(encodings) + len(pseudo))
                               + struct.pack(f">{len(encodings) + len(pseudo)}i", *encodings, *pseudo)))
    sock.sendall(f.from_client(struct.pack(">BBHHHH", 3, 0, 0, 0, init.width, init.height)))
    first = pump(sock, f, 2.0)
    assert first and f.server.closed is None
    for ch in b"echo filtered\r":  # typed through the filter: the guest's shell echoes it
        sock.sendall(f.from_client(struct.pack(">BBxxI", 4, 1, ch) + struct.pack(">BBxxI", 4, 0, ch)))
    sock.sendall(f.from_client(struct.pack(">BBHHHH", 3, 1, 0, 0, init.width, init.height)))
    pump(sock, f, 2.0)
    sock.close()
    assert f.server.closed is None and f.client.closed is None
    assert len(f.server.buf) == 0, "the filter must end on a message boundary"
    pixel_rects = sum(n for e, n in f.state.rects.items() if e >= 0 or e == -260)
    assert pixel_rects >= 2, f"too few rectangles: {dict(f.state.rects)}"
    assert set(f.state.rects) <= set(encodings) | set(pseudo) | {0}
