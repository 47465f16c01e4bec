#!/usr/bin/env python3
"""Scale a pool from 0 to N on real libvirt and compare with the floor, in the same run.

    .venv/bin/python bench/provision.py [--n 20]

ShiftDesk: `pools.create(size=N)` until every desktop is `ready` (the reconciler as it runs
in production: parallel steps, readiness from the guest's serial line).
Floor: a plain loop of `qemu-img create -b`, `virsh define`, `virsh start` for N domains with
the same XML and the same boot check (the READY line on each serial log).
The last line printed is one JSON object: {"n", "seconds", "floor_seconds", "ratio"}.
Killed (SIGTERM, SIGINT) it still removes every domain, volume and pool it made; after a kill -9
the next run removes them (bench/cleanup.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cleanup  # noqa: E402
from controlplane.config import Settings  # noqa: E402
from controlplane.domain.ports import BootImage, DesktopSpec  # noqa: E402
from controlplane.drivers.libvirt.driver import LibvirtHypervisor  # noqa: E402
from controlplane.main import build_context, build_reconciler  # noqa: E402
from controlplane.services import desktops, images, pools  # noqa: E402

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]


def wait_all_ready(hv: LibvirtHypervisor, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending and time.monotonic() < deadline:
        pending = {n for n in pending if not hv.is_ready(n)}
        time.sleep(0.05)
    if pending:
        raise SystemExit(f"bench: {len(pending)} domains never signalled ready")


def shiftdesk_run(settings: Settings, n: int, timeout: float) -> float:
    ctx = build_context(settings)
    images.build(ctx, "busybox-desktop", actor="bench")
    reconciler = build_reconciler(ctx, settings)
    began = time.monotonic()
    pools.create(ctx, name="bench", image="busybox-desktop", size=n, max_size=n, actor="bench")
    reconciler.wake.set()
    if not reconciler.run_until_converged(timeout=timeout, busy_period=settings.reconciler.busy_period_s):
        raise SystemExit("bench: pool did not converge")
    seconds = time.monotonic() - began
    assert sum(1 for d, _ in desktops.list_all(ctx) if d.state == "ready") == n
    pools.delete(ctx, "bench", actor="bench")
    reconciler.run_until_converged(timeout=timeout)
    reconciler.close()
    return seconds


def floor_run(settings: Settings, n: int, timeout: float) -> float:
    ctx = build_context(settings)
    image = images.get(ctx, "busybox-desktop")
    hv = ctx.hypervisor
    assert isinstance(hv, LibvirtHypervisor)
    boot = BootImage(disk=Path(image.disk_path), kernel=Path(image.kernel_path),
                     initrd=Path(image.initrd_path) if image.initrd_path else None, cmdline=image.cmdline)
    work = Path(tempfile.mkdtemp(prefix="floor-", dir=settings.data_dir))
    names = [f"sd-{settings.instance}-floor-{i:06x}" for i in range(n)]
    xml_files = []
    for i, name in enumerate(names):  # XML prepared outside the timed loop: the floor pays no modelling
        model = hv.domain_model(DesktopSpec(name=name, pool="floor", desktop_id=i, image=boot))
        disk = work / f"{name}.qcow2"
        root = model.to_xml().replace(
            f'<source pool="{hv.pool_name}" volume="{name}.qcow2" />', f'<source file="{disk}" />'
        ).replace('<disk type="volume" device="disk">', '<disk type="file" device="disk">')
        path = work / f"{name}.xml"
        path.write_text(root)
        xml_files.append((name, disk, path))
    began = time.monotonic()
    for name, disk, xml in xml_files:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(boot.disk), "-F", "qcow2", str(disk)],
                       check=True)
        subprocess.run([*VIRSH, "define", str(xml)], check=True, capture_output=True)
        hv.serial_log(name).unlink(missing_ok=True)
        subprocess.run([*VIRSH, "start", name], check=True, capture_output=True)
    wait_all_ready(hv, names, timeout)
    seconds = time.monotonic() - began
    for name, disk, _ in xml_files:
        subprocess.run([*VIRSH, "destroy", name], capture_output=True, check=False)
        subprocess.run([*VIRSH, "undefine", name], capture_output=True, check=False)
        disk.unlink(missing_ok=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="desktops to provision")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before giving up")
    args = parser.parse_args()
    instance = cleanup.run_instance("bprov")
    with cleanup.data_dir(instance) as tmp:
        settings = Settings(data_dir=Path(tmp), instance=instance,
                            images_dir=ROOT / "images", cache_dir=ROOT / ".cache",
                            reconciler={"boot_timeout_s": args.timeout, "parallelism": 8})
        try:
            seconds = shiftdesk_run(settings, args.n, args.timeout)
            print(f"shiftdesk: {args.n} desktops ready in {seconds:.2f} s", file=sys.stderr)
            floor = floor_run(settings, args.n, args.timeout)
            print(f"floor:     {args.n} domains ready in {floor:.2f} s", file=sys.stderr)
        finally:
            subprocess.run([*VIRSH, "pool-destroy", settings.storage_pool], capture_output=True, check=False)
            subprocess.run([*VIRSH, "pool-undefine", settings.storage_pool], capture_output=True, check=False)
    print(json.dumps({"n": args.n, "seconds": round(seconds, 3), "floor_seconds": round(floor, 3),
                      "ratio": round(seconds / floor, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
