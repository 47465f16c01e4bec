"""A tiny RFB 3.8 server on a Unix socket (thread), standing in for QEMU in gateway unit tests.
It records every message it receives, so tests can prove what never reached the desktop."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

from controlplane.domain.rfb.handshake import TRUE_COLOUR

SIZES = {0: 20, 3: 10, 4: 8, 5: 6}


class FakeVnc:
    def __init__(self, path: Path, width: int = 64, height: int = 48) -> None:
        self.path, self.width, self.height = path, width, height
        self.received = bytearray()  # everything after the handshake
        self.types: list[int] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn: socket.socket) -> None:
        try:
            conn.sendall(b"RFB 003.008\n")
            conn.recv(12)
            conn.sendall(b"\x01\x01")
            conn.recv(1)
            conn.sendall(b"\0\0\0\0")
            conn.recv(1)
            name = b"QEMU (secret-vm-name)"
            init = struct.pack(">HH", self.width, self.height) + TRUE_COLOUR + struct.pack(">I", len(name)) + name
            conn.sendall(init)
            buf = bytearray()
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                self.received += data
                buf += data
                while buf:
                    t = buf[0]
                    size = SIZES.get(t) or (4 + 4 * struct.unpack(">H", buf[2:4])[0] if t == 2 and len(buf) >= 4
                                            else 12 if t == 255 else None)
                    if size is None or len(buf) < size:
                        break
                    self.types.append(t)
                    del buf[:size]
                    if t == 3:
                        pixels = b"\x42" * (4 * 2 * 4)
                        conn.sendall(struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, 4, 2, 0) + pixels)
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
