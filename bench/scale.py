#!/usr/bin/env python3
"""The reconciler against many hosts: one pass over 50 hosts and 10,000 desktops.

    .venv/bin/python bench/scale.py [--hosts 50] [--desktops 10000] [--changes 500] [--passes 5]

Each host is libvirt's test driver with a node file of its own (test:///TMP/host-N.xml: 64 CPUs,
256 GiB), so every host is a separate libvirt connection, observed the way a real host is (the
real LibvirtHypervisor lists and parses every tagged domain of it); desktops are ready once
running and have no disk (the test driver keeps names only). Setup (not measured): 40 pools are
grown to DESKTOPS desktops, placed over the hosts by the real placement. Then:
- idle_pass_s: the median of PASSES reconcile passes with nothing to do;
- busy_pass_s: the pass that carries out CHANGES steps (half the pools shrink by CHANGES/2
  desktops in all, the other half grow by as many: deletes and creations with placement).
The floor measured in the same run: `plan_s`, the pure planning of the idle pass alone (the rest
of a pass is observing the hosts and the database).

Then bench/replicas.py (skipped with --no-replicas): the 400-agent logon storm across two
replicas on PostgreSQL (storm_*, duplicates) and the leader's failover with real processes
(failover_s, beside its peer lease_ttl_s). The last line printed is one JSON object. The pass
figures live in a temporary directory and in this process; bench/replicas.py cleans up after
itself, also when killed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.config import Settings  # noqa: E402
from controlplane.domain.planning import plan  # noqa: E402
from controlplane.domain.ports import DesktopSpec  # noqa: E402
from controlplane.drivers.libvirt.driver import LibvirtHypervisor  # noqa: E402
from controlplane.main import build_context  # noqa: E402
from controlplane.services import hosts, images, pools  # noqa: E402
from controlplane.services.fleet import Fleet  # noqa: E402
from controlplane.services.reconciler import Reconciler  # noqa: E402
from tests.conftest import FakeBuilder  # noqa: E402

POOLS = 40  # of at most 500 desktops each (the API's limit)
NODE = """<node>
  <cpu><mhz>2600</mhz><model>x86_64</model><active>64</active><nodes>1</nodes><sockets>2</sockets>
       <cores>16</cores><threads>2</threads></cpu>
  <memory>268435456</memory>
</node>
"""


class SimHost(LibvirtHypervisor):
    """A test-driver host: ready once running, no disks (the test driver keeps names only). Its
    overlays are names in a set, listed at once, as a real host's storage pool lists its volumes
    (one call for all names)."""

    def __init__(self, **kw) -> None:
        super().__init__(readiness="running", **kw)
        self.overlays: set[str] = set()

    def create_overlay(self, spec: DesktopSpec) -> Path:
        self.overlays.add(spec.name)
        return Path(f"/sim/{spec.name}.qcow2")

    def list_overlays(self) -> set[str]:
        return set(self.overlays)

    def delete_overlay(self, name: str) -> None:
        self.overlays.discard(name)


def converge(rec: Reconciler, limit: int = 200) -> None:
    for _ in range(limit):
        if not rec.pass_once().pending:
            return
    raise RuntimeError("setup did not converge")


def timed_pass(rec: Reconciler) -> tuple[float, int]:
    began = time.perf_counter()
    done = rec.pass_once()
    return time.perf_counter() - began, len(done.actions)


def run(n_hosts: int, n_desktops: int, changes: int, passes: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="shiftdesk-scale-") as tmp:
        root = Path(tmp)
        instance = f"sc{secrets.token_hex(3)}"

        def sim(uri: str, name: str) -> SimHost:
            return SimHost(uri=uri, instance=instance, storage_pool="default-pool", overlay_dir=Path(f"/{name}"),
                           run_dir=root / "run" / name)

        node = root / "host-0.xml"
        node.write_text(NODE)
        settings = Settings(data_dir=root / "data", instance=instance, libvirt={"uri": f"test://{node}"},
                            reconciler={"parallelism": 8})
        ctx = build_context(settings, hypervisor=sim(f"test://{node}", "h0"))
        ctx.builder = FakeBuilder()
        ctx.fleet = Fleet(ctx.engine, lambda name, uri: sim(uri, name))
        for i in range(1, n_hosts):
            (root / f"host-{i}.xml").write_text(NODE)
            hosts.register(ctx, name=f"h{i}", uri=f"test://{root / f'host-{i}.xml'}", actor="bench")
        images.build(ctx, "busybox-desktop", actor="bench")
        per_pool = n_desktops // POOLS
        for p in range(POOLS):
            pools.create(ctx, name=f"p{p:02d}", image="busybox-desktop", size=per_pool, max_size=per_pool * 2,
                         clone="cold", actor="bench")
        rec = Reconciler(ctx)
        began = time.perf_counter()
        converge(rec)
        setup_s = time.perf_counter() - began

        idle = [timed_pass(rec) for _ in range(passes)]
        assert all(n == 0 for _, n in idle), "the idle passes had work"
        view = rec.observe_and_plan  # the floor: planning alone, from one observation
        began = time.perf_counter()
        observed = view()
        observe_and_plan_s = time.perf_counter() - began
        assert not observed.actions

        half = POOLS // 2
        for p in range(POOLS):  # CHANGES/2 fewer desktops in the first half of the pools, as many more in the rest
            delta = (changes // 2) // half + (1 if p % half < (changes // 2) % half else 0)
            pools.scale(ctx, f"p{p:02d}", per_pool - delta if p < half else per_pool + delta, actor="bench")
        busy_s, busy_steps = timed_pass(rec)
        converge(rec)
        plan_s = _plan_only(rec)
        rec.close()
    return {"hosts": n_hosts, "desktops": n_desktops,
            "idle_pass_s": round(statistics.median(s for s, _ in idle), 3), "busy_pass_s": round(busy_s, 3),
            "busy_steps": busy_steps, "observe_and_plan_s": round(observe_and_plan_s, 3), "plan_s": plan_s,
            "setup_s": round(setup_s, 1)}


def _plan_only(rec: Reconciler) -> float:
    """Time of the pure planning step alone: observe once, then plan from the same views."""
    captured = {}
    original = plan

    def spy(*args, **kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        return original(*args, **kwargs)

    import controlplane.services.reconciler as module

    module.plan = spy
    try:
        rec.observe_and_plan()
    finally:
        module.plan = original
    began = time.perf_counter()
    original(*captured["args"], **captured["kwargs"])
    return round(time.perf_counter() - began, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--desktops", type=int, default=10000)
    parser.add_argument("--changes", type=int, default=500)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--storm", type=int, default=400)
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    parser.add_argument("--no-replicas", action="store_true", help="only the reconcile passes")
    args = parser.parse_args()
    if args.hosts < 1 or args.desktops < POOLS or args.changes < POOLS or args.passes < 1:
        parser.error(f"--hosts and --passes at least 1, --desktops and --changes at least {POOLS}")
    result = run(args.hosts, args.desktops, args.changes, args.passes)
    print(json.dumps(result), file=sys.stderr)  # the passes' figures, in case the replicas fail
    if not args.no_replicas:
        from bench import replicas  # noqa: PLC0415 - needs PostgreSQL and libvirt, the passes do not

        result |= replicas.run(args.storm, 10.0, args.lease_ttl)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
