#!/usr/bin/env python3
"""Connect latency, a logon storm, and the gateway's relay throughput, measured in one run.

    .venv/bin/python bench/connect.py [--connects 30] [--storm 200] [--storm-window 10]

1. connect: for a ready real desktop (TCG on qemu:///system), the time from "connect" (ticket
   issue and database claim) through the WSS gateway's two handshakes to the first
   FramebufferUpdate. p50 and p95 of --connects tries.
2. storm: --storm agents arrive uniformly within --storm-window seconds, each logging in,
   connecting and receiving pixels. The control plane runs in its own process with synthetic
   directory and desktops (bench/storm_server.py: 200 TCG desktops do not fit in 24 GiB / 2 cores),
   so this measures the API, broker, database and gateway, not QEMU.
3. relay_ratio: full raw frames per second through the gateway divided by the same frames read
   straight from the desktop's VNC socket, measured back to back.
The last line printed is one JSON object with all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEEPALIVE_S = 2.0  # the storm clients' idle keep-alive: below the server's 5 s (uvicorn's timeout_keep_alive)
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from bench import cleanup  # noqa: E402
from bench.stats import percentile  # noqa: E402
from controlplane.config import Settings  # noqa: E402
from controlplane.domain.rfb.handshake import UpstreamHandshake  # noqa: E402
from controlplane.drivers.fake import FakeDirectory  # noqa: E402
from controlplane.main import build_context, create_app, tls_files  # noqa: E402
from controlplane.services import images, pools  # noqa: E402
from controlplane.services.reconciler import Reconciler  # noqa: E402
from tests.conftest import AGENTS  # noqa: E402
from tests.e2e.conftest import Server  # noqa: E402

RAW = struct.pack(">BxHi", 2, 1, 0)



class Reader:
    """Exact-size reads over a websocket (async) or a socket (sync wrapper below)."""

    def __init__(self, recv) -> None:
        self.recv, self.buf = recv, bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.buf += await self.recv()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


async def rfb_client_handshake(r: Reader, send) -> tuple[int, int]:
    assert await r.read(12) == b"RFB 003.008\n"
    await send(b"RFB 003.008\n")
    await r.read(2)
    await send(b"\x01")
    await r.read(4)
    await send(b"\x01")
    w, h = struct.unpack(">HH", await r.read(4))
    await r.read(16)
    await r.read(struct.unpack(">I", await r.read(4))[0])
    return w, h


async def raw_frame(r: Reader, bpp: int = 4) -> int:
    """Read one FramebufferUpdate of raw rectangles; return its size in bytes."""
    while (kind := (await r.read(1))[0]) == 2:
        pass
    assert kind == 0, kind
    (count,) = struct.unpack(">xH", await r.read(3))
    size = 4
    for _ in range(count):
        x, y, w, h, e = struct.unpack(">HHHHi", await r.read(12))
        n = w * h * bpp if e == 0 else 0
        await r.read(n)
        size += 12 + n
    return size


async def gateway_session(base: str, ca: ssl.SSLContext, http: httpx.AsyncClient, token: str, pool: str,
                          frames: int = 1) -> tuple[float, int, str]:
    """connect -> WSS -> handshakes -> FRAMES raw updates. Returns (seconds to first update, bytes,
    the desktop it was given)."""
    began = time.perf_counter()
    r = await http.post(f"/api/v1/me/pools/{pool}/connect", headers={"Authorization": f"Bearer {token}"})
    r.raise_for_status()
    url = base.replace("https", "wss") + f"/gateway?ticket={r.json()['ticket']}"
    async with ws_connect(url, ssl=ca, origin=base, additional_headers={"Cookie": f"sd_session={token}"},
                          max_size=None, subprotocols=["binary"]) as ws:
        reader = Reader(ws.recv)
        w, h = await rfb_client_handshake(reader, ws.send)
        await ws.send(RAW + struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        total = await raw_frame(reader)
        first = time.perf_counter() - began
        for _ in range(frames - 1):
            await ws.send(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
            total += await raw_frame(reader)
    return first, total, r.json()["desktop"]


async def login(http: httpx.AsyncClient, user: str, password: str) -> str:
    r = await http.post("/api/v1/auth/login", json={"username": user, "password": password})
    r.raise_for_status()
    return r.json()["token"]


# --- 1 and 3: a real desktop ------------------------------------------------------------------------


async def real_desktop_figures(connects: int, frames: int) -> tuple[list[float], float]:
    instance = cleanup.run_instance("bconn")
    with cleanup.data_dir(instance) as tmp:
        settings = Settings(data_dir=Path(tmp), instance=instance, images_dir=ROOT / "images",
                            cache_dir=ROOT / ".cache", gateway={"ticket_ttl_s": 30})
        ctx = build_context(settings, directory=FakeDirectory({"agent": ("Bench-pw-1", {AGENTS})}))
        images.build(ctx, "busybox-desktop", actor="bench")
        pools.create(ctx, name="bench", image="busybox-desktop", size=1, groups=[AGENTS], actor="bench")
        rec = Reconciler(ctx)
        try:
            assert rec.run_until_converged(timeout=300)
            cert, key = tls_files(settings)
            ca = ssl.create_default_context(cafile=str(cert.parent / "ca.pem"))
            with Server(create_app(settings, ctx), cert, key) as server:
                async with httpx.AsyncClient(base_url=server.url, verify=ca) as http:
                    token = await login(http, "agent", "Bench-pw-1")
                    latencies = []
                    for _ in range(connects):
                        first, _, _ = await gateway_session(server.url, ca, http, token, "bench")
                        latencies.append(first)
                    gw_bps = await throughput_gateway(server.url, ca, http, token, frames)
            (name,) = ctx.hypervisor.list_desktops()
            direct_bps = await throughput_direct(str(ctx.hypervisor.vnc_socket(name)), frames)
            print(f"relay: gateway {gw_bps / 1e6:.1f} MB/s, direct {direct_bps / 1e6:.1f} MB/s", file=sys.stderr)
            return latencies, gw_bps / direct_bps
        finally:
            pools.delete(ctx, "bench", actor="bench")
            rec.run_until_converged(timeout=120)
            rec.close()
            subprocess.run(["virsh", "-c", "qemu:///system", "pool-destroy", settings.storage_pool],
                           capture_output=True, check=False)
            subprocess.run(["virsh", "-c", "qemu:///system", "pool-undefine", settings.storage_pool],
                           capture_output=True, check=False)


async def throughput_gateway(base, ca, http, token, frames) -> float:
    began = time.perf_counter()
    _, total, _ = await gateway_session(base, ca, http, token, "bench", frames=frames)
    return total / (time.perf_counter() - began)


async def throughput_direct(path: str, frames: int) -> float:
    reader, writer = await asyncio.open_unix_connection(path)
    hs = UpstreamHandshake()
    began = time.perf_counter()
    while hs.result is None:
        writer.write(hs.feed(await reader.read(4096)))
    w, h = hs.result.width, hs.result.height
    r = Reader(lambda: reader.read(65536))
    writer.write(RAW)
    total = 0
    for _ in range(frames):
        writer.write(struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        total += await raw_frame(r)
    elapsed = time.perf_counter() - began
    writer.close()
    return total / elapsed


# --- 2: the storm -----------------------------------------------------------------------------------


@dataclass
class Storm:
    latencies: list[float]  # of the agents that got pixels
    failures: int
    desktops: list[str]  # the desktop each agent that got pixels was given
    cpu_s: float = 0.0  # the machine's busy CPU seconds during the storm, where measured


def start_storm_server(data: Path, agents: int, *extra: str) -> tuple[subprocess.Popen, str, str]:
    """bench/storm_server.py in its own process: (the process, its base URL, its CA file)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "storm_server.py"), str(data), str(agents), *extra],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    line = proc.stdout.readline().split() if proc.stdout else []
    if not line or line[0] != "READY":
        proc.kill()
        raise SystemExit("bench: storm server did not start")
    return proc, f"https://127.0.0.1:{line[1]}", line[2]


def stop_storm_servers(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every server at once, then SIGKILL to any still up after 20 s (a stop that hangs
    is not a failed run: the figures are already taken)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def run_storm(servers: list[tuple[str, str]], agents: int, window: float) -> Storm:
    """AGENTS agents arrive uniformly within WINDOW seconds, agent i at server i mod len(SERVERS)
    (base URL, CA file), each signing in, connecting and receiving pixels there."""
    # an idle pooled connection is dropped before the server's keep-alive timeout (uvicorn: 5 s,
    # httpx's own default expiry too): reused at that instant it would be closed under the request
    limits = httpx.Limits(max_connections=agents, max_keepalive_connections=agents, keepalive_expiry=KEEPALIVE_S)
    clients = [httpx.AsyncClient(base_url=base, verify=ssl.create_default_context(cafile=ca), limits=limits,
                                 timeout=30) for base, ca in servers]
    rnd = random.Random(7)
    offsets = sorted(rnd.uniform(0, window) for _ in range(agents))
    t0 = time.perf_counter()

    async def agent(i: int, at: float) -> tuple[float, str] | None:
        (base, ca_file), http = servers[i % len(servers)], clients[i % len(servers)]
        await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        began = time.perf_counter()
        try:
            token = await login(http, f"agent{i:03d}", f"Pw-{i:03d}-storm")
            _, _, desktop = await gateway_session(base, ssl.create_default_context(cafile=ca_file), http, token,
                                                  "storm")
            return time.perf_counter() - began, desktop
        except Exception as err:  # noqa: BLE001 - every failure counts, whatever it is
            print(f"agent{i:03d}: {type(err).__name__}: {err}", file=sys.stderr)
            return None

    try:
        results = await asyncio.gather(*(agent(i, at) for i, at in enumerate(offsets)))
    finally:
        for http in clients:
            await http.aclose()
    ok = [r for r in results if r is not None]
    return Storm([t for t, _ in ok], len(results) - len(ok), [d for _, d in ok])


async def storm(agents: int, window: float) -> tuple[list[float], int]:
    with tempfile.TemporaryDirectory(prefix="shiftdesk-storm-") as tmp:
        proc, base, ca_file = start_storm_server(Path(tmp), agents)
        try:
            await asyncio.sleep(0.5)
            result = await run_storm([(base, ca_file)], agents, window)
        finally:
            stop_storm_servers([proc])
    return result.latencies, result.failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=30)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--storm", type=int, default=200)
    parser.add_argument("--storm-window", type=float, default=10.0)
    args = parser.parse_args()
    latencies, ratio = asyncio.run(real_desktop_figures(args.connects, args.frames))
    print(f"connect: p50 {statistics.median(latencies):.3f} s over {len(latencies)}", file=sys.stderr)
    ok, failures = asyncio.run(storm(args.storm, args.storm_window))
    result = {
        "connect_p50_s": round(percentile(latencies, 0.5), 4),
        "connect_p95_s": round(percentile(latencies, 0.95), 4),
        "storm_agents": args.storm,
        "storm_failures": failures,
        "storm_p50_s": round(percentile(ok, 0.5), 4) if ok else None,
        "storm_p99_s": round(percentile(ok, 0.99), 4) if ok else None,
        "relay_ratio": round(ratio, 3),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
