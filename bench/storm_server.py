#!/usr/bin/env python3
"""The control plane for bench/connect.py's logon storm, in its own process: real API, broker,
gateway and RFB filter over HTTPS/WSS; synthetic directory and desktops (N tiny RFB servers),
because N real TCG desktops do not fit on a 2-core machine. Prints "READY <port> <ca>" when up.

    python bench/storm_server.py DATA_DIR N
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import uvicorn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.config import Settings  # noqa: E402
from controlplane.drivers.fake import FakeDirectory, FakeHypervisor  # noqa: E402
from controlplane.main import build_context, create_app, tls_files  # noqa: E402
from controlplane.services import images, pools  # noqa: E402
from controlplane.services.reconciler import Reconciler  # noqa: E402
from tests.conftest import AGENTS, FakeBuilder  # noqa: E402
from tests.unit.gateway.fake_vnc import FakeVnc  # noqa: E402


def main() -> int:
    data, n = Path(sys.argv[1]), int(sys.argv[2])
    settings = Settings(data_dir=data, instance="storm", libvirt={"uri": "fake://"},
                        gateway={"max_connections_per_user": 4, "ticket_ttl_s": 60})
    hv = FakeHypervisor(root=data / "vnc")
    users = {f"agent{i:03d}": (f"Pw-{i:03d}-storm", {AGENTS}) for i in range(n)}
    ctx = build_context(settings, hypervisor=hv, directory=FakeDirectory(users))
    ctx.builder = FakeBuilder()
    images.build(ctx, "busybox-desktop", actor="bench")
    pools.create(ctx, name="storm", image="busybox-desktop", size=n, max_size=n, groups=[AGENTS], actor="bench")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=120, busy_period=0)
    rec.close()
    servers = [FakeVnc(hv.vnc_socket(name), width=640, height=400) for name in hv.domains]
    cert, key = tls_files(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"READY {port} {cert.parent / 'ca.pem'}", flush=True)
    uvicorn.run(create_app(settings, ctx), host="127.0.0.1", port=port, log_level="error", access_log=False,
                ssl_certfile=str(cert), ssl_keyfile=str(key), ws_max_size=1 << 20)
    del servers
    return 0


if __name__ == "__main__":
    sys.exit(main())
