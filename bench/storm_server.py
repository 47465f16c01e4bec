#!/usr/bin/env python3
"""The control plane for the logon storms of bench/connect.py and bench/replicas.py, in its own
process: real API, broker, gateway and RFB filter over HTTPS/WSS; synthetic directory and desktops
(N agents, N or M tiny RFB servers), because N real TCG desktops do not fit on a 2-core machine. Prints
"READY <port> <ca>" when up.

    python bench/storm_server.py DATA_DIR N [--desktops M] [--db URL --migrate-url URL] [--follower]

With --db, the database is that PostgreSQL; a second process started with --follower on the same
database and DATA_DIR is another replica: it makes nothing, and its fake hypervisor shows the
desktops the first one made (both replicas see one host's libvirt), whose RFB servers the first
process runs.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.config import Settings  # noqa: E402
from controlplane.domain.ports import BootImage, DesktopSpec, HostCapacity  # noqa: E402
from controlplane.drivers.fake import FakeDirectory, FakeHypervisor  # noqa: E402
from controlplane.main import build_context, build_server, create_app, tls_files  # noqa: E402
from controlplane.services import desktops, images, pools  # noqa: E402
from controlplane.services.reconciler import Reconciler  # noqa: E402
from tests.conftest import AGENTS, FakeBuilder  # noqa: E402
from tests.unit.gateway.fake_vnc import FakeVnc  # noqa: E402


def make_desktops(ctx, hv: FakeHypervisor, n: int) -> list[FakeVnc]:
    images.build(ctx, "busybox-desktop", actor="bench")
    pools.create(ctx, name="storm", image="busybox-desktop", size=n, max_size=n, groups=[AGENTS], actor="bench")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=120, busy_period=0)
    rec.close()
    return [FakeVnc(hv.vnc_socket(name), width=640, height=400) for name in hv.domains]


def mirror(ctx, hv: FakeHypervisor) -> None:
    """The desktops another replica made, running and ready in this process's fake hypervisor."""
    hv.boot_passes = 0
    for row, pool in desktops.list_all(ctx):
        hv.define(DesktopSpec(name=row.name, pool=pool.name, desktop_id=row.id or 0,
                              image=BootImage(disk=Path("/fake/disk"), kernel=Path("/fake/kernel"), initrd=None,
                                              cmdline="", image_id=row.image_id)))
        hv.start(row.name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("n", type=int)
    parser.add_argument("--desktops", type=int, help="desktops in the pool (default: one per agent)")
    parser.add_argument("--db")
    parser.add_argument("--migrate-url")
    parser.add_argument("--follower", action="store_true")
    args = parser.parse_args()
    settings = Settings(data_dir=args.data, instance="storm", libvirt={"uri": "fake://"},
                        gateway={"max_connections_per_user": 4, "ticket_ttl_s": 60},
                        db={"url": args.db, "migrate_url": args.migrate_url} if args.db else {})
    hv = FakeHypervisor(root=args.data / "vnc")
    # a host big enough for every agent's desktop (placement counts vCPUs and memory; the fake
    # host's default, 8 vCPUs, takes 64 desktops of one vCPU)
    hv.host = HostCapacity(vcpus=128, memory_mib=512 << 10, disk_bytes=1 << 40, disk_free_bytes=1 << 39)
    users = {f"agent{i:03d}": (f"Pw-{i:03d}-storm", {AGENTS}) for i in range(args.n)}
    ctx = build_context(settings, hypervisor=hv, directory=FakeDirectory(users))
    ctx.builder = FakeBuilder()
    servers = [] if args.follower else make_desktops(ctx, hv, args.desktops or args.n)
    if args.follower:
        mirror(ctx, hv)
    cert, key = tls_files(settings)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(f"READY {port} {cert.parent / 'ca.pem'}", flush=True)
    # the server `shiftdesk serve` runs (its TLS, frame cap, no permessage-deflate), not a lookalike
    build_server(create_app(settings, ctx), settings, host="127.0.0.1", port=port, cert=cert, key=key).run()
    del servers
    return 0


if __name__ == "__main__":
    sys.exit(main())
