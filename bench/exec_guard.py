#!/usr/bin/env python3
"""What enforcing the app allowlist costs an agent desktop's start, against no enforcer and
against Debian's fapolicyd enforcing the same rule.

    .venv/bin/python bench/exec_guard.py [--runs 1] [--timeout 900]

Cold-boots the agent-desktop image on real QEMU (TCG here) and times `virsh start` to the guest
agent's `ready` (the session shows Firefox with a loaded page), in three variants chosen on the
kernel command line, one desktop at a time, round-robin for --runs rounds:
- floor: no enforcer (`systemd.mask=shiftdesk-exec-guard.service`);
- exec_guard: as shipped (images/recipes/agent-desktop/rootfs/usr/lib/shiftdesk/exec-guard:
  fanotify FAN_OPEN_EXEC_PERM, executions only);
- fapolicyd: Debian's fapolicyd 1.1.7 with the same trust and rule (uid 1000 executes trusted
  files only), instead of the guard (`systemd.mask=` the guard, `systemd.wants=fapolicyd.service`).
A variant that is not ready within --timeout counts as the timeout (and is named in "timed_out").

The last line is one JSON object: {"runs", "ready_s_floor", "ready_s_exec_guard",
"ready_s_fapolicyd" (medians), "exec_guard_ratio", "fapolicyd_ratio" (each over the floor),
"timed_out"}. Killed (SIGTERM, SIGINT) it removes every domain, volume and pool it made; after a
kill -9 the next run does (bench/cleanup.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cleanup  # noqa: E402
from controlplane.config import Settings  # noqa: E402
from controlplane.domain.ports import BootImage, DesktopSpec  # noqa: E402
from controlplane.main import build_context  # noqa: E402
from controlplane.services import images  # noqa: E402
from controlplane.services.templates import boot_image  # noqa: E402

GUARD = "shiftdesk-exec-guard.service"
VARIANTS = {
    "floor": f"systemd.mask={GUARD}",
    "exec_guard": "",
    "fapolicyd": f"systemd.mask={GUARD} systemd.wants=fapolicyd.service",
}


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def boot_once(hv, boot: BootImage, shape: dict, name: str, timeout: float) -> float | None:  # type: ignore[no-untyped-def]
    """Seconds from start to the session's `ready`; None after TIMEOUT. The desktop is gone after."""
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
                return time.monotonic() - began
            if state.quarantined:
                raise SystemExit(f"bench: {name} was quarantined: {state.quarantined}")
            time.sleep(0.2)
        return None
    finally:
        hv.destroy(name)
        hv.undefine(name)
        hv.delete_overlay(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="rounds of the three variants")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a desktop may take to show its page")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    instance = cleanup.run_instance("bguard")
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
            for run in range(args.runs):
                for i, (variant, extra) in enumerate(VARIANTS.items()):
                    boot = dataclasses.replace(base, cmdline=f"{base.cmdline} {extra}".strip())
                    seconds = boot_once(ctx.hypervisor, boot, shape, f"sd-{instance}-bench-{run:03x}{i:03x}",
                                        args.timeout)
                    say(f"{variant}: {'timed out' if seconds is None else f'{seconds:.1f} s'}")
                    if seconds is None:
                        timed_out.append(variant)
                    taken[variant].append(args.timeout if seconds is None else seconds)
        finally:
            cleanup.purge(instance)
    medians = {v: round(statistics.median(s), 1) for v, s in taken.items()}
    print(json.dumps({"runs": args.runs, **{f"ready_s_{v}": m for v, m in medians.items()},
                      "exec_guard_ratio": round(medians["exec_guard"] / medians["floor"], 2),
                      "fapolicyd_ratio": round(medians["fapolicyd"] / medians["floor"], 2),
                      "timed_out": timed_out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
