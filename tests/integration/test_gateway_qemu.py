"""Login -> connect -> gateway WebSocket -> real QEMU desktop: pixels arrive, a key typed through
the gateway changes the desktop's screen, and pasted clipboard text never reaches the desktop."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from fastapi.testclient import TestClient

from controlplane.drivers.fake import FakeDirectory
from controlplane.main import create_app
from controlplane.services import audit, pools
from controlplane.services.reconciler import Reconciler
from tests.conftest import AGENTS


class WsReader:
    def __init__(self, ws) -> None:
        self.ws, self.buf = ws, bytearray()

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += self.ws.receive_bytes()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data


def read_update(r: WsReader, fb: bytearray, width: int) -> int:
    """Apply one raw FramebufferUpdate to FB; return the number of pixels it touched."""
    while (kind := r.read(1)[0]) == 2:
        pass
    assert kind == 0, kind
    (count,) = struct.unpack(">xH", r.read(3))
    touched = 0
    for _ in range(count):
        x, y, w, h, e = struct.unpack(">HHHHi", r.read(12))
        if e != 0:
            continue
        data = r.read(w * h * 4)
        for row in range(h):
            start = ((y + row) * width + x) * 4
            fb[start:start + w * 4] = data[row * w * 4:(row + 1) * w * 4]
        touched += w * h
    return touched


class UpstreamTap:
    """A Unix-socket proxy in front of the desktop's VNC socket that records what the gateway sends."""

    def __init__(self, target: str, path: str) -> None:
        self.target, self.sent = target, bytearray()
        self.live: list[socket.socket] = []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(path)
        self.server.listen(4)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.server.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX)
            up.connect(self.target)
            self.live += [down, up]
            threading.Thread(target=self._copy, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._copy, args=(up, down, False), daemon=True).start()

    def drop(self) -> None:
        """Cut every connection, like a network failure between gateway and desktop."""
        for sock in self.live:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.live.clear()

    def _copy(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            dst.close()


def test_agent_sees_and_types_through_the_gateway(real_ctx, real_settings, golden, tmp_path):
    real_ctx.directory = FakeDirectory({"alice": ("Alice-pw-1234", {AGENTS})})
    pools.create(real_ctx, name="floor", image="busybox-desktop", size=1, groups=[AGENTS], actor="test")
    rec = Reconciler(real_ctx)
    assert rec.run_until_converged(timeout=180)
    rec.close()
    hv = real_ctx.hypervisor
    (name,) = hv.list_desktops()
    tap = UpstreamTap(str(hv.vnc_socket(name)), str(tmp_path / "tap.sock"))
    hv.vnc_socket = lambda _name: tmp_path / "tap.sock"  # the gateway now talks through the tap
    with TestClient(create_app(real_settings, real_ctx)) as client:
        login = {"username": "alice", "password": "Alice-pw-1234"}
        token = client.post("/api/v1/auth/login", json=login).json()["token"]
        ticket = client.post("/api/v1/me/pools/floor/connect", headers={"Authorization": f"Bearer {token}"}).json()
        headers = {"origin": "http://testserver", "cookie": f"sd_session={token}"}
        with client.websocket_connect(f"/gateway?ticket={ticket['ticket']}", headers=headers) as ws:
            r = WsReader(ws)
            assert r.read(12) == b"RFB 003.008\n"
            ws.send_bytes(b"RFB 003.008\n")
            assert r.read(2) == b"\x01\x01"
            ws.send_bytes(b"\x01")
            assert r.read(4) == b"\0\0\0\0"
            ws.send_bytes(b"\x01")
            width, height = struct.unpack(">HH", r.read(4))
            r.read(16)
            name = r.read(struct.unpack(">I", r.read(4))[0])
            assert name == b"ShiftDesk desktop"
            ws.send_bytes(struct.pack(">BxHi", 2, 1, 0) + struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))
            fb = bytearray(width * height * 4)
            read_update(r, fb, width)
            before = bytes(fb)
            assert len(set(before)) > 1, "the desktop's screen is blank"
            paste = b"echo PASTED-SECRET\r"
            ws.send_bytes(struct.pack(">Bxxxi", 6, len(paste)) + paste)
            for ch in b"echo typed-through-gateway\r":
                ws.send_bytes(struct.pack(">BBxxI", 4, 1, ch) + struct.pack(">BBxxI", 4, 0, ch))
            changed = False
            for _ in range(30):
                ws.send_bytes(struct.pack(">BBHHHH", 3, 1, 0, 0, width, height))
                read_update(r, fb, width)
                if bytes(fb) != before:
                    changed = True
                    break
            assert changed, "a key typed in the browser did not change the desktop's screen"
    events = {e["action"] for e in audit.recent(real_ctx, limit=200)}
    assert {"session.start", "session.clipboard_dropped"} <= events
    assert b"PASTED-SECRET" not in tap.sent and b"\x06\x00\x00\x00" not in tap.sent
    assert b"\x04\x01\x00\x00\x00\x00\x00t" in tap.sent  # while the typed keys did reach the desktop
