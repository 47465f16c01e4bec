#!/usr/bin/env python3
"""Control-plane replicas on PostgreSQL: a logon storm across two, and the leader's failover.

    .venv/bin/python bench/replicas.py [--storm 400] [--storm-window 10] [--lease-ttl 15]

- storm: two replicas (bench/storm_server.py, the second with --follower) on one throwaway
  PostgreSQL (tests/postgres.py, Debian's binaries) share STORM synthetic desktops; STORM agents
  arrive within --storm-window seconds, agent i at replica i mod 2, each signing in, connecting
  and receiving pixels through that replica's gateway (bench/connect.py's client). `duplicates`:
  agents that got pixels minus the desktops they were given (two agents on one desktop would
  make it positive). The peer, measured in the same run: the same storm against one replica
  (storm_one_replica_*). The client, both servers and PostgreSQL share this machine's cores.
- failover: two `shiftdesk serve` on this machine's libvirt (tests/integration/replicas.py), the
  second under another hostname so only the lease can hand over; the leader is killed with
  SIGKILL; `failover_s` is the time from the kill until the second holds the reconciler lease.
  Its peer, measured in the same run, is the lease TTL (target: at most two TTLs).
Everything (the cluster, the processes, the data directory, libvirt's storage pool) is removed at
the end, also when the run is killed (bench/cleanup.py). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import cleanup  # noqa: E402
from bench.connect import Storm, run_storm, start_storm_server, stop_storm_servers  # noqa: E402
from bench.stats import percentile  # noqa: E402
from controlplane.config import Settings  # noqa: E402
from controlplane.db.engine import make_engine  # noqa: E402
from tests.integration.replicas import Replica, wait_for  # noqa: E402
from tests.postgres import APP, OWNER, Postgres  # noqa: E402


def database(pg: Postgres) -> dict[str, str]:
    name = pg.create_database(template=pg.migrated_template())
    return {"url": pg.url(name, APP), "migrate_url": pg.url(name, OWNER)}


def storm(data: Path, pg: Postgres, agents: int, window: float, replicas: int = 2,
          desktops: int | None = None, db: dict[str, str] | None = None) -> Storm:
    """AGENTS agents against REPLICAS storm servers (1 or 2) on DB (default a fresh database of
    PG), with a pool of DESKTOPS (default one per agent)."""
    db = db or database(pg)
    extra = ["--db", db["url"], "--migrate-url", db["migrate_url"], "--desktops", str(desktops or agents)]
    servers = []
    try:
        servers.append(start_storm_server(data, agents, *extra))
        if replicas == 2:
            servers.append(start_storm_server(data, agents, *extra, "--follower"))
        time.sleep(0.5)
        busy = cpu_busy_s()
        result = asyncio.run(run_storm([(base, ca) for _, base, ca in servers], agents, window))
        result.cpu_s = cpu_busy_s() - busy
        return result
    finally:
        stop_storm_servers([proc for proc, _, _ in servers])


def cpu_busy_s() -> float:
    """CPU seconds this machine has spent busy (every core, every process) since boot: /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def storm_figures(data: Path, pg: Postgres, agents: int, window: float) -> dict:
    """The storm across two replicas, and its peer: the same storm against one. Its floor: the CPU
    the storm took (clients, servers and PostgreSQL together) per agent, and so how many agents a
    second this machine's cores can serve at all; arrivals faster than that queue, whatever the design."""
    two = storm(data / "two", pg, agents, window)
    one = storm(data / "one", pg, agents, window, replicas=1)
    per_agent = two.cpu_s / agents
    return {"storm_agents": agents, "storm_failures": two.failures,
            "storm_arrivals_per_s": round(agents / window, 1),
            "storm_cpu_ms_per_agent": round(1000 * per_agent, 1),
            "storm_capacity_per_s": round((os.cpu_count() or 1) / per_agent, 1) if per_agent else None,
            "storm_p50_s": round(percentile(two.latencies, 0.5), 4) if two.latencies else None,
            "storm_p99_s": round(percentile(two.latencies, 0.99), 4) if two.latencies else None,
            "duplicates": len(two.desktops) - len(set(two.desktops)),
            "storm_one_replica_failures": one.failures,
            "storm_one_replica_p99_s": round(percentile(one.latencies, 0.99), 4) if one.latencies else None}


def failover(data: Path, pg: Postgres, instance: str, lease_ttl_s: float) -> dict:
    settings = Settings(data_dir=data / "replicas", instance=instance, images_dir=ROOT / "images",
                        cache_dir=ROOT / ".cache", libvirt={"uri": "qemu:///system"}, db=database(pg))
    engine = make_engine(settings.db.url or "")
    a = Replica(settings, data / "a.log", lease_ttl_s=lease_ttl_s)
    b = None
    try:
        a.wait_up()
        wait_for("the first replica to lead", lambda: a.leads(engine), 60)
        b = Replica(settings, data / "b.log", hostname="replica-b", lease_ttl_s=lease_ttl_s)
        b.wait_up()
        time.sleep(1)  # the standby is in its loop, asking for the lease every period
        a.kill()
        killed = time.monotonic()
        wait_for("the second replica to take over", lambda: b.leads(engine), 10 * lease_ttl_s, every=0.05)
        took = time.monotonic() - killed
    finally:
        a.kill()
        if b is not None:
            b.kill(signal.SIGTERM)
        engine.dispose()
    return {"failover_s": round(took, 2), "lease_ttl_s": lease_ttl_s}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--storm", type=int, default=400)
    parser.add_argument("--storm-window", type=float, default=10.0)
    parser.add_argument("--lease-ttl", type=float, default=15.0)
    args = parser.parse_args()
    if args.storm < 1 or args.storm > 999 or args.lease_ttl <= 0:
        parser.error("--storm from 1 to 999 (agent names have three digits), --lease-ttl above 0")
    print(json.dumps(run(args.storm, args.storm_window, args.lease_ttl)))
    return 0


def run(agents: int, window: float, lease_ttl_s: float) -> dict:
    instance = cleanup.run_instance("brepl")
    with cleanup.data_dir(instance) as tmp:
        data = Path(tmp)
        data.chmod(0o711)  # the cluster's owner (postgres) and QEMU search their way in
        pg = Postgres(parent=data).start()
        try:
            return {**storm_figures(data, pg, agents, window), **failover(data, pg, instance, lease_ttl_s)}
        finally:
            pg.stop()


if __name__ == "__main__":
    sys.exit(main())
