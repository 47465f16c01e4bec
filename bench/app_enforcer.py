#!/usr/bin/env python3
"""What enforcing the app allowlist costs: an agent desktop's start with and without
fapolicyd, and how long a new signed allowlist takes to be in force.

    .venv/bin/python bench/app_enforcer.py [--runs 1] [--changes 10] [--timeout 900]

Cold-boots the agent-desktop image on real QEMU (TCG here) and times `virsh start` to the guest
agent's `ready` (the session shows Firefox with a loaded page), in two variants chosen on the
kernel command line, one desktop at a time, round-robin for --runs rounds:
- floor: no enforcer (`systemd.mask=fapolicyd.service`);
- fapolicyd: as shipped (Debian's fapolicyd 1.1.7; uid 1000 executes trusted files only).
On each fapolicyd desktop it then sends --changes signed allowlists, alternating between two
lists, and times each from the send to the guest's report that it applies it (apply-apps:
fapolicyd's trust rewritten and reloaded, apps no longer allowed stopped, the launcher redrawn).
A variant that is not ready within --timeout counts as the timeout (and is named in "timed_out").

The last line is one JSON object: {"runs", "ready_s_floor", "ready_s_fapolicyd" (medians),
"fapolicyd_ratio" (over the floor), "apply_p50_s", "apply_p95_s", "changes", "timed_out"}.
Killed (SIGTERM, SIGINT) it removes every domain, volume and pool it made; after a kill -9 the
next run does (bench/cleanup.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cleanup  # noqa: E402
from bench.stats import percentile  # noqa: E402
from controlplane.config import Settings  # noqa: E402
from controlplane.domain.app_policy import AppPolicy, sign  # noqa: E402
from controlplane.domain.ports import BootImage, DesktopSpec  # noqa: E402
from controlplane.main import build_context  # noqa: E402
from controlplane.services import images  # noqa: E402
from controlplane.services.templates import boot_image  # noqa: E402

VARIANTS = {"floor": "systemd.mask=fapolicyd.service", "fapolicyd": ""}
LISTS = ({"firefox-esr", "mousepad"}, {"firefox-esr", "galculator"})



def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def boot_once(hv, boot: BootImage, shape: dict, name: str, timeout: float,  # type: ignore[no-untyped-def]
              apply: Callable[[str], list[float]] | None) -> tuple[float | None, list[float]]:
    """Seconds from start to the session's `ready` (None after TIMEOUT), and what APPLY measured
    on the desktop then. The desktop is gone after."""
    spec = DesktopSpec(name=name, pool="bench", desktop_id=1, image=boot, **shape)
    hv.create_overlay(spec)
    hv.define(spec)
    began = time.monotonic()
    hv.start(name)
    try:
        while time.monotonic() - began < timeout:
            hv.is_ready(name)  # connects and sends the identity; ready follows the session
            state = hv.links.state(name)
            if state.ready:
                return time.monotonic() - began, apply(name) if apply else []
            if state.quarantined:
                raise SystemExit(f"bench: {name} was quarantined: {state.quarantined}")
            time.sleep(0.2)
        return None, []
    finally:
        hv.destroy(name)
        hv.undefine(name)
        hv.delete_overlay(name)


def apply_times(hv, key, changes: int, name: str) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds from sending each of CHANGES allowlists to NAME to its report that it applies it."""
    taken = []
    for revision in range(1, changes + 1):
        began = time.monotonic()
        assert hv.deliver_apps(name, sign(key, AppPolicy.of(name, revision, LISTS[revision % 2])))
        while hv.links.state(name).apps_applied != revision:
            if hv.links.state(name).quarantined or time.monotonic() - began > 120:
                raise SystemExit(f"bench: {name} did not apply revision {revision}: "
                                 f"{hv.links.state(name).quarantined or 'no answer in 120 s'}")
            time.sleep(0.05)
        taken.append(time.monotonic() - began)
    return taken


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="rounds of the two variants")
    parser.add_argument("--changes", type=int, default=10, help="allowlists sent to each fapolicyd desktop")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a desktop may take to show its page")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    instance = cleanup.run_instance("bapps")
    with cleanup.data_dir(instance) as tmp:
        settings = Settings(data_dir=Path(tmp), instance=instance, images_dir=ROOT / "images",
                            cache_dir=ROOT / ".cache")
        try:
            ctx = build_context(settings)
            image = images.build(ctx, "agent-desktop", actor="bench")
            base, shape = boot_image(image), {"memory_mib": image.manifest["memory_mib"],
                                              "vcpus": image.manifest["vcpus"]}
            taken: dict[str, list[float]] = {v: [] for v in VARIANTS}
            timed_out: list[str] = []
            applied: list[float] = []
            measure = partial(apply_times, ctx.hypervisor, ctx.app_signer, args.changes)
            for run in range(args.runs):
                for i, (variant, extra) in enumerate(VARIANTS.items()):
                    boot = dataclasses.replace(base, cmdline=f"{base.cmdline} {extra}".strip())
                    seconds, times = boot_once(ctx.hypervisor, boot, shape, f"sd-{instance}-bench-{run:03x}{i:03x}",
                                               args.timeout, measure if variant == "fapolicyd" else None)
                    applied += times
                    say(f"{variant}: {'timed out' if seconds is None else f'{seconds:.1f} s'}")
                    if seconds is None:
                        timed_out.append(variant)
                    taken[variant].append(args.timeout if seconds is None else seconds)
        finally:
            cleanup.purge(instance)
    medians = {v: round(statistics.median(s), 1) for v, s in taken.items()}
    print(json.dumps({"runs": args.runs, **{f"ready_s_{v}": m for v, m in medians.items()},
                      "fapolicyd_ratio": round(medians["fapolicyd"] / medians["floor"], 2),
                      "apply_p50_s": round(statistics.median(applied), 2) if applied else None,
                      "apply_p95_s": round(percentile(applied, 0.95), 2) if applied else None,
                      "changes": len(applied), "timed_out": timed_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
