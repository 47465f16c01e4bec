#!/usr/bin/env python3
"""A week of a contact centre, on an injected clock, against the real reconciler and scheduler logic.

    .venv/bin/python bench/shift_sim.py [--step-minutes 1] [--boot-s 5.5] [--per-second 0.46]

Hypervisor: libvirt's test driver (test:///default) behind a pacing wrapper, so a started desktop
becomes ready only after the boot time and at the provisioning rate that bench/provision.py
measures on this machine (defaults: 20 desktops in 43.8 s -> 0.46/s, 5.5 s boot). The week: three
weekday shifts, a quiet weekend, and one promotion afternoon at 8x the running shift. Agents
arrive up to 10 minutes early or late and leave around their shift's end; each arrival asks the
broker for a desktop: it either finds one ready or counts as a miss (and retries each minute).

Three strategies run the same week:
- roster: scaling.evaluate every step (pre-warm lead, buffer, reactive top-up, ramp-down);
- fixed_peak: a fixed pool sized for the week's peak need;
- clock_no_prewarm: the pool follows the head-count at each moment, with no pre-warm.
ready_pct = arrivals that found a desktop at once; cost_ratio = desktop-hours used / the oracle
minimum (the sum of the time each agent was present). Time advances from event to event: a grid of
--step-minutes, every arrival and departure, and the scheduler's planned wake-ups; the reconciler
passes once at each (in production it runs continuously). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import random
import secrets
import sys
import tempfile
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.config import Settings  # noqa: E402
from controlplane.domain.ports import DesktopSpec, ObservedDomain  # noqa: E402
from controlplane.domain.roster import ProvisioningRate, Roster, intervals, need  # noqa: E402
from controlplane.domain.roster_load import to_roster  # noqa: E402
from controlplane.drivers.libvirt.driver import LibvirtHypervisor  # noqa: E402
from controlplane.errors import NotFound, TemporaryError  # noqa: E402
from controlplane.main import build_context  # noqa: E402
from controlplane.services import broker, desktops, pools, scaling, sessions  # noqa: E402
from controlplane.services.reconciler import Reconciler  # noqa: E402
from controlplane.services.tokens import Claims  # noqa: E402
from tests.conftest import AGENTS, FakeBuilder, ManualClock  # noqa: E402

WEEK_START = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)  # a Monday
# A working agent's display session. The simulation has no gateway sending heartbeats, so the session
# holds its desktop for longer than the simulated time, until the agent leaves (release).
WORKING = sessions.Limits(idle_s=1e9, max_s=1e9, grace_s=timedelta(days=30).total_seconds())
ROSTER = {
    "pool": "floor", "timezone": "Europe/Berlin", "min": 0, "max": 400,
    "buffer": {"min": 1, "percent": 2}, "ramp_down": {"logoff_after_minutes": 10}, "arrival_margin_minutes": 10,
    "shifts": [
        {"name": "early", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "06:00", "end": "14:00",
         "headcount": 30},
        {"name": "late", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "14:00", "end": "22:00",
         "headcount": 20},
        {"name": "night", "days": ["mon", "tue", "wed", "thu", "fri"], "start": "22:00", "end": "06:00",
         "headcount": 5},
        {"name": "weekend", "days": ["sat", "sun"], "start": "09:00", "end": "17:00", "headcount": 6},
    ],
    # Wednesday afternoon live-stream promotion: 8x the late shift (20 -> 160) from 14:00 to 18:00
    "events": [{"name": "promotion", "start": "2026-11-25T14:00", "end": "2026-11-25T18:00", "headcount": 140}],
}


class PacedHypervisor(LibvirtHypervisor):
    """The test driver, but a started desktop is ready only after boot time, at a limited rate."""

    def __init__(self, clock: ManualClock, rate: ProvisioningRate, **kw) -> None:
        super().__init__(readiness="running", **kw)
        self.clock, self.rate = clock, rate
        self.ready_at: dict[str, datetime] = {}
        self.pipeline = clock.now()

    def start(self, name: str) -> None:
        super().start(name)
        now = self.clock.now()
        self.pipeline = max(now, self.pipeline) + timedelta(seconds=1 / self.rate.per_second)
        self.ready_at[name] = self.pipeline + timedelta(seconds=self.rate.boot_s)

    def list_desktops(self) -> dict[str, ObservedDomain]:
        now = self.clock.now()
        return {n: replace(d, ready=d.ready and self.ready_at.get(n, now) <= now)
                for n, d in super().list_desktops().items()}

    def create_overlay(self, spec: DesktopSpec) -> Path:
        return Path(f"/sim/{spec.name}.qcow2")  # no disk: the test driver only keeps names

    def list_overlays(self) -> set[str]:
        return set(super().list_desktops())

    def delete_overlay(self, name: str) -> None:
        self.ready_at.pop(name, None)


@dataclass
class Agent:
    name: str
    arrive: datetime
    leave: datetime
    desktop: str | None = None
    missed: bool = False
    gone: bool = False


def agents_for(roster: Roster, rnd: random.Random) -> list[Agent]:
    people = []
    for start, end, count in intervals(roster, WEEK_START, WEEK_START + timedelta(days=7)):
        for _ in range(count):
            arrive = start + timedelta(minutes=rnd.uniform(-10, 10))
            leave = end + timedelta(minutes=rnd.uniform(-5, 5))
            if WEEK_START <= arrive < WEEK_START + timedelta(days=7):
                people.append(Agent(f"a{len(people):05d}", arrive, leave))
    return people


def timeline(ctx, start: datetime, end: datetime, step: timedelta, people: list[Agent],
             strategy: str) -> list[datetime]:
    """Every moment something happens: the step grid, each agent's arrival and departure, and (for
    the roster strategy) the scheduler's planned wake-ups (roster edges minus lead time), as the
    real scheduler's date jobs would fire them."""
    moments = set()
    t = start
    while t < end:
        moments.add(t)
        t += step
    for agent in people:
        moments.update({agent.arrive, agent.leave})
    if strategy == "roster":
        moments.update(at for _, at in scaling.next_wakes(ctx, start, end - start))
    return sorted(m for m in moments if start <= m < end)


def simulate(strategy: str, roster_doc: dict, rate: ProvisioningRate, step: timedelta, seed: int,
             trace: list | None = None) -> dict:
    roster = to_roster(roster_doc)
    rnd = random.Random(seed)
    people = agents_for(roster, rnd)
    peak = max(need(roster, WEEK_START + timedelta(minutes=m)) for m in range(0, 7 * 1440, 5))
    with tempfile.TemporaryDirectory(prefix="shiftdesk-sim-") as tmp:
        instance = f"sim{secrets.token_hex(3)}"
        settings = Settings(data_dir=Path(tmp), instance=instance, libvirt={"uri": "test:///default"},
                            reconciler={"boot_timeout_s": 3600})
        clock = ManualClock(WEEK_START - timedelta(hours=2))
        hv = PacedHypervisor(clock, rate, uri="test:///default", instance=instance, storage_pool="default-pool",
                             overlay_dir=Path("/default-pool"), run_dir=Path(tmp) / "run")
        ctx = build_context(settings, hypervisor=hv)
        ctx.clock, ctx.builder, ctx.parallelism = clock, FakeBuilder(), 8
        ctx.provisioning_rate = rate  # plan with bench/provision.py's figures, as an operator would configure
        from controlplane.services import images

        images.build(ctx, "busybox-desktop", actor="sim")
        pools.create(ctx, name="floor", image="busybox-desktop", size=peak if strategy == "fixed_peak" else 0,
                     max_size=400, groups=[AGENTS], actor="sim")
        if strategy == "roster":
            scaling.apply(ctx, {"floor.yaml": json.dumps(roster_doc)}, actor="sim")
        rec = Reconciler(ctx)
        ctx.limits = replace(ctx.limits, boot_timeout=timedelta(hours=1))
        end = WEEK_START + timedelta(days=7)
        moments = timeline(ctx, clock.now(), end, step, people, strategy)
        heapq.heapify(moments)
        seen = set(moments)
        desktop_minutes = present_minutes = 0.0
        ready_first = total = 0
        waiting: list[Agent] = []
        by_arrival = sorted(people, key=lambda a: a.arrive)
        i = 0
        while moments:
            t = heapq.heappop(moments)
            t_next = moments[0] if moments else end
            clock.t = t
            if strategy == "roster":
                scaling.evaluate(ctx)
                for _, at in scaling.next_wakes(ctx, t, timedelta(hours=24)):  # as plan_wakes() re-plans
                    if t < at < end and at not in seen:
                        seen.add(at)
                        heapq.heappush(moments, at)
                t_next = moments[0] if moments else end
            elif strategy == "clock_no_prewarm":
                pools.scale(ctx, "floor", min(400, need(roster, t)), actor="sim")
            rec.pass_once()  # the reconciler runs continuously: look at the world before anyone logs in
            while i < len(by_arrival) and by_arrival[i].arrive <= t:
                waiting.append(by_arrival[i])
                total += 1
                i += 1
            still = []
            for agent in waiting:
                try:
                    agent.desktop = broker.connect(ctx, Claims(agent.name, "agent", (AGENTS,), "j", 0),
                                                   "floor").desktop
                    sessions.open_display(ctx, desktop_id=desktops.get(ctx, agent.desktop)[0].id or 0, user=agent.name,
                                          jti="j", source="sim", gateway="sim", limits=WORKING, period_s=0)
                    ready_first += 0 if agent.missed else 1
                except TemporaryError:
                    agent.missed = True
                    still.append(agent)
            waiting = still
            for agent in people:
                if agent.desktop and agent.leave <= t:
                    with contextlib.suppress(NotFound):  # a ramp-down may have logged them off already
                        broker.release(ctx, agent.desktop, actor="sim")
                    agent.desktop, agent.gone = None, True
            if t >= WEEK_START:
                span = (t_next - t).total_seconds() / 60
                have = len(hv.list_desktops())
                present = sum(1 for a in people if a.arrive <= t and not a.gone and a.leave > t)
                desktop_minutes += have * span
                present_minutes += present * span
                if trace is not None:
                    trace.append((t.isoformat(), have, present, pools.get(ctx, "floor").target_size))
        rec.close()
        for name in list(hv.list_desktops()):
            hv.undefine(name)
    return {"ready_pct": round(100.0 * ready_first / max(total, 1), 2),
            "cost_ratio": round(desktop_minutes / max(present_minutes, 1e-9), 3), "agents": total, "peak": peak}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step-minutes", type=float, default=1.0)
    parser.add_argument("--boot-s", type=float, default=5.5, help="from bench/provision.py on this machine")
    parser.add_argument("--per-second", type=float, default=0.46, help="from bench/provision.py on this machine")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rate = ProvisioningRate(boot_s=args.boot_s, per_second=args.per_second)
    step = timedelta(minutes=args.step_minutes)
    results = {}
    for strategy in ("roster", "fixed_peak", "clock_no_prewarm"):
        results[strategy] = simulate(strategy, ROSTER, rate, step, args.seed)
        print(f"{strategy}: {results[strategy]}", file=sys.stderr)
    roster = results["roster"]
    print(json.dumps({"ready_pct": roster["ready_pct"], "cost_ratio": roster["cost_ratio"],
                      "fixed_peak": {k: results["fixed_peak"][k] for k in ("ready_pct", "cost_ratio")},
                      "clock_no_prewarm": {k: results["clock_no_prewarm"][k] for k in ("ready_pct", "cost_ratio")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
