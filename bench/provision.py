#!/usr/bin/env python3
"""Cold boot, ShiftDesk cold provisioning, instant clones, one at a time, host memory: one run.

    .venv/bin/python bench/provision.py [--image busybox-desktop] [--n 10] [--skip PHASE,...]

Phases (each can be skipped with --skip; the desktops of one are gone before the
next starts; pools get the image manifest's memory_mib and vcpus). With --apps APP,... a policy
binds the pools and allows those apps (what an idle desktop's guest enforces; without it, no
app is allowed, so the agent desktop's first list always differs from the image's browser-only
default and costs fapolicyd a reload):
- cold (run first): `pools.create(size=N, clone="cold")` driven by the real reconciler
  (`run_until_converged`, parallelism 8, as in production). cold_seconds: from the pool's
  creation to the last desktop's `desktop.ready` audit event.
- floor: a plain loop of `qemu-img create -b`, `virsh define`, `virsh start` for N domains with
  the XML the driver emits (`LibvirtHypervisor.domain_model`, prepared outside the timed loop),
  then the driver's own `is_ready` until all N are ready: the READY line on the serial log
  (busybox-desktop), or over the host channel (agent-desktop: the identity is sent, the guest
  agent confirms it and says ready once the session shows its browser).
  floor_seconds: first `qemu-img create` to the last domain ready.
- instant: the same with clone="instant". template_seconds: from the pool's creation to the
  `template.saved` audit event (template build + cold boot until ready + save);
  instant_seconds: from `template.saved` to the last `desktop.ready`.
- memory: on the instant pool's N desktops: KSM on from before the instant pool is created, as
  on a host that shares desktop memory (`run` = 1 and `pages_to_scan` for a full scan of the N
  desktops' memory every 10 s, both restored at exit), then, from the last desktop's ready,
  `--idle` seconds (60) idle, then host_mib_per_desktop = the drop of MemAvailable from before
  the instant pool existed, divided by N; ksm_pages_sharing from /sys/kernel/mm/ksm;
  qemu_pss_mib_per_desktop, the summed Pss of the N QEMU processes / N, as a cross-check that
  other tenants of the host cannot skew. Runs the instant pool even when `instant` is skipped.
- single: through the REST API of the app (`create_app` with its reconciler thread, via
  FastAPI's TestClient, authenticated with the break-glass admin token `identity.local_admin_token`,
  since the API's sign-in needs an AD): an instant pool at size 0; once its template is saved,
  --samples (20) times `PATCH /api/v1/pools/single {"size": 1}`, then `GET /api/v1/desktops`
  every 0.1 s until the desktop is `ready` (that interval is one sample), then size 0 until it
  is gone. single_p50_s, single_p95_s over the samples.

The last line printed is one JSON object: {"image", "n", "apps", "floor_seconds", "cold_seconds",
"instant_seconds", "template_seconds", "instant_ratio" (instant/floor), "single_p50_s",
"single_p95_s", "host_mib_per_desktop", "guest_mib", "ksm_pages_sharing",
"qemu_pss_mib_per_desktop", "thp"}; a skipped phase gives null. The whole run has transparent
huge pages off (`--thp never`, the default: QEMU asks for them for guest RAM, so a restored clone
would hold every 2 MiB region its template ever wrote, whole, and KSM would split them before it
merged anything; `--thp host` keeps the host's setting); `thp` says which it ran with.
Killed (SIGTERM, SIGINT) it still removes every domain, template, save file, volume and pool it
made and puts KSM and THP back as they were; after a kill -9 the next run does (bench/cleanup.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cleanup  # noqa: E402
from bench.stats import percentile  # noqa: E402
from controlplane.config import ReconcilerSettings, Settings  # noqa: E402
from controlplane.db import audit  # noqa: E402
from controlplane.db.engine import session_scope  # noqa: E402
from controlplane.domain import naming  # noqa: E402
from controlplane.domain.ports import BootImage, DesktopSpec  # noqa: E402
from controlplane.drivers.libvirt import host_access  # noqa: E402
from controlplane.drivers.libvirt.driver import LibvirtHypervisor  # noqa: E402
from controlplane.main import build_context, build_reconciler, create_app  # noqa: E402
from controlplane.services import desktops, identity, images, policies, pools, templates  # noqa: E402
from controlplane.services.context import Context  # noqa: E402

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
PHASES = ("floor", "cold", "instant", "memory", "single")
BENCH_GROUP = "CN=bench-agents,OU=Groups,DC=bench,DC=test"
POLL_S = 0.02
KSM_FULL_SCAN_S = 10.0  # the memory phase's KSM rate: a full scan of the desktops this often


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def wall(at: datetime) -> float:
    """Unix time of a database timestamp (SQLite gives them back naive, in UTC)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def events(ctx: Context, action: str) -> list[audit.AuditEvent]:
    with session_scope(ctx.engine) as session:
        return audit.list_recent(session=session, limit=10_000, action=action)


def wait_for(what: str, check, timeout: float, every: float = POLL_S):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise SystemExit(f"bench: timed out after {timeout:.0f} s waiting for {what}")


def time_restores(hv: LibvirtHypervisor) -> list[float]:
    """Seconds each `restore_clone` of HV takes from now on (a timing wrapper; it calls through)."""
    taken: list[float] = []
    restore = hv.restore_clone

    def timed(spec: DesktopSpec) -> Path:
        began = time.monotonic()
        try:
            return restore(spec)
        finally:
            taken.append(time.monotonic() - began)

    hv.restore_clone = timed  # type: ignore[method-assign]
    return taken


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return f"{min(values):.2f}..{max(values):.2f} s (median {statistics.median(values):.2f}, {len(values)})"


# --- floor ------------------------------------------------------------------------------------


def floor_run(ctx: Context, settings: Settings, boot: BootImage, shape: dict, n: int, timeout: float) -> float:
    hv = ctx.hypervisor
    assert isinstance(hv, LibvirtHypervisor)
    work = settings.data_dir / "floor"  # plain files, not volumes: no storage pool in the loop
    work.mkdir(mode=0o700, exist_ok=True)
    hv.conn  # noqa: B018 - prepares the run directory for QEMU, as for any desktop
    if hv.qemu is not None and not hv.qemu.is_root:  # what the driver grants before its own defines
        for directory in {work, *(p.parent for p in (boot.disk, boot.kernel, boot.initrd) if p is not None)}:
            host_access.grant_search(settings.data_dir, directory, hv.qemu.gid)
    names = [f"sd-{settings.instance}-floor-{i:06x}" for i in range(n)]
    prepared = []
    for i, name in enumerate(names):  # XML prepared outside the timed loop: the floor pays no modelling
        spec = DesktopSpec(name=name, pool="floor", desktop_id=i, image=boot, **shape)
        disk = work / f"{name}.qcow2"
        xml = hv.domain_model(spec).to_xml()
        volume = f'<source pool="{hv.pool_name}" volume="{name}.qcow2" />'
        if volume not in xml or '<disk type="volume" device="disk">' not in xml:
            raise SystemExit("bench: the driver's disk XML changed; update floor_run")
        xml = xml.replace(volume, f'<source file="{disk}" />').replace(
            '<disk type="volume" device="disk">', '<disk type="file" device="disk">')
        path = work / f"{name}.xml"
        path.write_text(xml)
        prepared.append((name, disk, path))
    try:
        began = time.monotonic()
        for name, disk, xml_path in prepared:
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(boot.disk), "-F", "qcow2",
                            str(disk)], check=True)
            subprocess.run([*VIRSH, "define", str(xml_path)], check=True, capture_output=True)
            hv.serial_log(name).unlink(missing_ok=True)
            subprocess.run([*VIRSH, "start", name], check=True, capture_output=True)
        pending = set(names)
        # The floor's readiness is the guest's: its identity confirmed and its session shown.
        # An app allowlist applied on top is ShiftDesk's own work (its reconciler delivers it),
        # and this loop sends none: with enforcement on, no floor domain would ever be ready.
        enforcing, hv.enforce_apps = hv.enforce_apps, False

        def all_ready() -> bool:
            for name in sorted(name for name in pending if hv.is_ready(name)):
                pending.discard(name)
                say(f"floor: {name} ready at {time.monotonic() - began:.1f} s ({n - len(pending)}/{n})")
            return not pending

        # every 0.5 s: asking each booting domain 20 times a second took CPU from the boots it
        # timed (as the single phase's 20 ms poll did), for a resolution minutes do not need
        try:
            wait_for(f"{n} floor domains to be ready", all_ready, timeout, every=0.5)
        finally:
            hv.enforce_apps = enforcing
        return time.monotonic() - began
    finally:
        for name, disk, _ in prepared:
            hv.undefine(name)
            disk.unlink(missing_ok=True)


# --- ShiftDesk pools through the reconciler ---------------------------------------------------


def pool_run(ctx: Context, settings: Settings, image_ref: str, shape: dict, name: str, clone: str, n: int,
             timeout: float) -> dict[str, float]:
    """Create pool NAME (size N) and reconcile until its desktops are ready. Returns Unix times:
    created, saved (instant: the template), ready (the last desktop); the pool stays."""
    reconciler = build_reconciler(ctx, settings)
    try:
        created = time.time()
        pools.create(ctx, name=name, image=image_ref, size=n, max_size=max(n, 1), clone=clone, actor="bench",
                     **shape)
        # an instant pool may need two boots in a row: its template's, then a fallback's
        if not reconciler.run_until_converged(timeout=2 * timeout, busy_period=settings.reconciler.busy_period_s):
            raise SystemExit(f"bench: pool {name} did not converge in {2 * timeout:.0f} s")
    finally:
        reconciler.close()
    rows = [d for d, _ in desktops.list_all(ctx, name)]
    states = {d.name: (d.state, d.reason) for d in rows}
    if sum(1 for d in rows if d.state == "ready") != n:
        raise SystemExit(f"bench: pool {name}: not every desktop is ready: {states}")
    ready = [e for e in events(ctx, "desktop.ready") if e.target in states]
    times = {"created": created, "ready": max(wall(e.at) for e in ready) if ready else time.time()}
    boots = sorted(float(e.detail.get("boot_s", 0)) for e in ready)
    if boots:
        say(f"pool {name}: per-desktop provisioning {spread(boots)}")
    if clone == "instant":
        saved = [wall(e.at) for e in events(ctx, "template.saved") if wall(e.at) >= created - 1]
        times["saved"] = min(saved) if saved else created
        restored = {e.target for e in events(ctx, "desktop.restore")} & set(states)
        failed = [e.detail for e in events(ctx, "desktop.restore_failed")]
        if len(restored) != n or failed:
            say(f"pool {name}: only {len(restored)} of {n} desktops were restored; the rest booted cold "
                f"{failed[:3]}")
    return times


def remove_pool(ctx: Context, settings: Settings, name: str, timeout: float) -> None:
    pools.delete(ctx, name, actor="bench")
    reconciler = build_reconciler(ctx, settings)
    try:
        if not reconciler.run_until_converged(timeout=timeout, busy_period=settings.reconciler.busy_period_s):
            say(f"pool {name} was not removed in {timeout:.0f} s (the exit sweep will)")
    finally:
        reconciler.close()


# --- host memory ------------------------------------------------------------------------------


def meminfo(field: str = "MemAvailable") -> int:
    """KiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return int(value.split()[0])
    raise SystemExit(f"bench: no {field} in /proc/meminfo")


def ksm(name: str) -> int:
    return int((cleanup.KSM / name).read_text())


def qemu_pss_kib(names: list[str]) -> int:
    total = 0
    for name in names:
        try:
            pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text())
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except (FileNotFoundError, ValueError, ProcessLookupError):
            continue
        total += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return total


def foreign_running(instance: str) -> list[str]:
    names = subprocess.run([*VIRSH, "list", "--name"], capture_output=True, text=True, check=False).stdout.split()
    return [name for name in names if not name.startswith(naming.domain_prefixes(instance))]


def ksm_scan_rate(memory_mib: int) -> int:
    """KSM pages_to_scan for a full scan of MEMORY_MIB every KSM_FULL_SCAN_S at the host's
    sleep_millisecs (at least 1000). KSM merges a page only once it found it unchanged over two
    scans, so a fixed rate that merges four desktops within a minute merges nothing of ten: one
    scan of 10 GiB at 1000 pages per 20 ms takes 52 s. An operator sizes it the same way."""
    pages = memory_mib * 256
    return max(1000, math.ceil(pages * int(ksm("sleep_millisecs")) / (KSM_FULL_SCAN_S * 1000)))


@contextlib.contextmanager
def ksm_running(data: Path, pages_to_scan: int) -> Iterator[int]:
    """KSM on for the block, as on a host that shares desktop memory (it runs all the time, not
    once the desktops are up); yields the pages_to_scan in force."""
    with cleanup.ksm_on(data, **({"pages_to_scan": pages_to_scan} if pages_to_scan else {})) as previous:
        scan = ksm("pages_to_scan")
        say(f"KSM on (was run={previous[cleanup.KSM / 'run']}; pages_to_scan={scan}, "
            f"sleep_millisecs={ksm('sleep_millisecs')})")
        yield scan


def memory_run(ctx: Context, name: str, n: int, baseline_kib: int, idle: float, scan: int) -> dict:
    """With the pool idle for IDLE seconds (KSM on since before it existed: `ksm_running`):
    MemAvailable, then destroy the pool's domains and read it again. The drop is what those
    desktops held (a bracket of seconds, so other tenants of a shared host barely move it; the
    baseline from before the pool existed is printed too). Leaves the pool's desktops powered off."""
    hv = ctx.hypervisor
    names = [d.name for d, _ in desktops.list_all(ctx, name)]
    say(f"{idle:.0f} s idle; KSM pages_sharing {ksm('pages_sharing')} as the last desktop is ready")
    began = time.monotonic()
    while (left := idle - (time.monotonic() - began)) > 0:  # how fast KSM merges, as it goes
        time.sleep(min(15.0, left))
        say(f"KSM after {time.monotonic() - began:.0f} s: pages_sharing {ksm('pages_sharing')}, "
            f"full_scans {ksm('full_scans')}, MemAvailable {meminfo() // 1024} MiB")
    others = foreign_running(ctx.instance)
    with_kib = meminfo()
    sharing, shared = ksm("pages_sharing"), ksm("pages_shared")
    pss = qemu_pss_kib(names)
    for desktop in names:
        hv.destroy(desktop)
    time.sleep(2)
    without_kib = meminfo()
    if others or foreign_running(ctx.instance) != others:
        say(f"other domains ran on the host during the memory phase (MemAvailable is host-wide): {others}")
    say(f"MemAvailable: {baseline_kib // 1024} MiB before the pool, {with_kib // 1024} MiB with its {n} desktops "
        f"idle, {without_kib // 1024} MiB once they were destroyed; KSM pages_sharing {sharing}, pages_shared "
        f"{shared}; QEMU Pss {pss // 1024} MiB for {len(names)} desktops")
    return {"host_mib_per_desktop": round((without_kib - with_kib) / 1024 / n, 1),
            "ksm_pages_sharing": sharing, "ksm_pages_to_scan": scan,
            "qemu_pss_mib_per_desktop": round(pss / 1024 / max(len(names), 1), 1)}


# --- one at a time, through the API -----------------------------------------------------------


def single_run(ctx: Context, settings: Settings, image_ref: str, shape: dict, samples: int,
               timeout: float) -> list[float]:
    from fastapi.testclient import TestClient

    hv = ctx.hypervisor
    token, _ = identity.local_admin_token(ctx, actor="bench")
    app = create_app(settings, ctx, build_reconciler(ctx, settings))
    with TestClient(app) as client:
        client.headers["authorization"] = f"Bearer {token}"

        def call(method: str, url: str, **kw) -> list | dict:  # type: ignore[no-untyped-def]
            reply = client.request(method, url, **kw)
            if reply.status_code >= 400:
                raise SystemExit(f"bench: {method} {url}: {reply.status_code} {reply.text[:300]}")
            return reply.json()

        def gone(pool: str) -> bool:
            return client.get(f"/api/v1/pools/{pool}").status_code == 404

        if gone("single"):
            call("POST", "/api/v1/pools", json={"name": "single", "image": image_ref, "size": 0, "max_size": 1,
                                                "clone": "instant", **shape})
        wait_for("the single pool's template", lambda: any(t.saved for t in hv.list_templates().values()),
                 timeout, every=0.2)
        taken = []
        for i in range(samples):
            began = time.monotonic()
            call("PATCH", "/api/v1/pools/single", json={"size": 1})

            def ready() -> list:
                found = call("GET", "/api/v1/desktops", params={"pool": "single"})
                if any(d["state"] == "failed" for d in found):
                    raise SystemExit(f"bench: single desktop failed: {found}")
                return [d for d in found if d["state"] == "ready"]

            desktop = wait_for("the single desktop", ready, timeout, every=0.1)[0]
            taken.append(time.monotonic() - began)
            say(f"single {i + 1}/{samples}: {desktop['name']} ready in {taken[-1]:.2f} s")
            call("PATCH", "/api/v1/pools/single", json={"size": 0})
            wait_for("the single desktop to go",
                     lambda: not call("GET", "/api/v1/desktops", params={"pool": "single"}), timeout, every=0.1)
        call("DELETE", "/api/v1/pools/single")
        wait_for("the single pool to be removed", lambda: gone("single"), timeout, every=0.2)
        try:
            wait_for("the unused template to be removed", lambda: not hv.list_templates(), 30, every=0.5)
        except SystemExit:
            say(f"a template is still there 30 s after its last pool went: {list(hv.list_templates())}")
    return taken



# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, settings: Settings, skip: set[str]) -> dict:
    ctx = build_context(settings)
    began = time.monotonic()
    image = images.build(ctx, args.image, actor="bench")
    image_ref = f"{image.name}:{image.version}"
    restores = time_restores(ctx.hypervisor)  # type: ignore[arg-type]
    boot = templates.boot_image(image)
    shape = {"memory_mib": int(image.manifest.get("memory_mib", 256)), "vcpus": int(image.manifest.get("vcpus", 1))}
    say(f"image {image_ref} ready in {time.monotonic() - began:.1f} s; readiness {boot.readiness.value}, "
        f"{shape['memory_mib']} MiB, {shape['vcpus']} vCPU")
    if args.apps:
        policies.apply(ctx, {"bench.yaml": bench_policy(args.apps)}, actor="bench")
    out: dict = {"image": args.image, "n": args.n, "apps": args.apps, "floor_seconds": None, "cold_seconds": None,
                 "instant_seconds": None, "template_seconds": None, "instant_ratio": None, "single_p50_s": None,
                 "single_p95_s": None, "host_mib_per_desktop": None, "guest_mib": shape["memory_mib"],
                 "ksm_pages_sharing": None, "ksm_pages_to_scan": None, "qemu_pss_mib_per_desktop": None}
    if "cold" not in skip:
        times = pool_run(ctx, settings, image_ref, shape, "cold", "cold", args.n, args.timeout)
        out["cold_seconds"] = round(times["ready"] - times["created"], 3)
        say(f"cold:    {args.n} desktops ready in {out['cold_seconds']:.2f} s")
        remove_pool(ctx, settings, "cold", args.timeout)
    if "floor" not in skip:
        out["floor_seconds"] = round(floor_run(ctx, settings, boot, shape, args.n, args.timeout), 3)
        say(f"floor:   {args.n} domains ready in {out['floor_seconds']:.2f} s")
    if not {"instant", "memory"} <= skip:
        scan = args.ksm_pages_to_scan
        if scan is None:
            scan = ksm_scan_rate(args.n * shape["memory_mib"])
        with ksm_running(settings.data_dir, scan) if "memory" not in skip else contextlib.nullcontext(0) as scan:
            time.sleep(1)
            baseline = meminfo()
            times = pool_run(ctx, settings, image_ref, shape, "instant", "instant", args.n, args.timeout)
            out["template_seconds"] = round(times["saved"] - times["created"], 3)
            out["instant_seconds"] = round(times["ready"] - times["saved"], 3)
            say(f"instant: template saved {out['template_seconds']:.2f} s after the pool's creation, "
                f"{args.n} clones ready {out['instant_seconds']:.2f} s after that")
            if "memory" not in skip:
                out.update(memory_run(ctx, "instant", args.n, baseline, args.idle, scan))
        say(f"restore_clone: {spread(restores)}")
        restores.clear()
        if "single" not in skip:  # made before the instant pool goes, so their common template stays
            pools.create(ctx, name="single", image=image_ref, size=0, max_size=1, clone="instant", actor="bench",
                         **shape)
        remove_pool(ctx, settings, "instant", args.timeout)
    if "single" not in skip:
        taken = single_run(ctx, settings, image_ref, shape, args.samples, args.timeout)
        out["single_p50_s"], out["single_p95_s"] = round(percentile(taken, 0.5), 3), round(percentile(taken, 0.95), 3)
        say(f"single: {spread(taken)}; restore_clone in them: {spread(restores)}")
    if out["instant_seconds"] is not None and out["floor_seconds"]:
        out["instant_ratio"] = round(out["instant_seconds"] / out["floor_seconds"], 3)
    return out


def bench_policy(apps: list[str]) -> str:
    """A policy binding the bench's pools (no agent signs in: only its pools and apps matter)."""
    return (f'name: bench\nbind:\n  groups: ["{BENCH_GROUP}"]\n  pools: [cold, instant, single]\n'
            f"apps:\n  allow: [{', '.join(apps)}]\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="busybox-desktop", help="recipe under images/recipes")
    parser.add_argument("--n", type=int, default=10, help="desktops per phase")
    parser.add_argument("--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}")
    parser.add_argument("--samples", type=int, default=20, help="one-at-a-time samples through the API")
    parser.add_argument("--apps", type=lambda v: [a for a in v.split(",") if a], default=[],
                        help="apps a policy on the pools allows (comma-separated; default: none)")
    parser.add_argument("--idle", type=float, default=60, help="seconds idle with KSM on before measuring memory")
    parser.add_argument("--ksm-pages-to-scan", type=int, default=None,
                        help="KSM pages_to_scan for the memory phase (0: the host's own; kernel default 100; "
                             f"default: a full scan of the N desktops' memory every {KSM_FULL_SCAN_S:.0f} s)")
    parser.add_argument("--thp", choices=("never", "host"), default="never",
                        help="transparent huge pages during the run: never (the README's host setting for "
                             "desktops sharing memory; restored at exit) or as the host has them")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds a desktop or template may take to boot (a pool phase waits twice that)")
    args = parser.parse_args()
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - set(PHASES) or args.n < 1 or args.samples < 1:
        parser.error(f"--skip takes {','.join(PHASES)}; --n and --samples must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    instance = cleanup.run_instance("bprov")
    # N desktops at once is what the bench measures: placement's vCPU limit (8 per host CPU by
    # default) would hold the eighth 2-vCPU agent desktop back on a 2-core host
    rc = {"boot_timeout_s": args.timeout, "parallelism": 8, "cpu_ratio": 64.0}
    if "template_wait_s" in ReconcilerSettings.model_fields:  # a template under TCG can take minutes
        rc["template_wait_s"] = args.timeout
    with cleanup.data_dir(instance) as tmp:
        settings = Settings(data_dir=Path(tmp), instance=instance, images_dir=ROOT / "images",
                            cache_dir=ROOT / ".cache", reconciler=rc)
        try:
            with cleanup.thp_never(settings.data_dir) if args.thp == "never" else contextlib.nullcontext():
                out = {**run(args, settings, skip), "thp": cleanup.current(cleanup.THP)}
        finally:
            cleanup.restore_settings(settings.data_dir)  # already done unless interrupted inside; cheap
            cleanup.purge(instance)  # domains, templates, volumes, pool and the data directory with the
            # templates' save files (DATA_DIR/templates) and per-clone restore files (DATA_DIR/run)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
