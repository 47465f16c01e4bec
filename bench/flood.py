#!/usr/bin/env python3
"""A hostile agent floods the gateway; another agent's latency, the server's memory and SIGTERM.

    .venv/bin/python bench/flood.py [--seconds 20]

Everything is real: a throwaway Samba AD DC on loopback, `shiftdesk serve` in its own process
(HTTPS/WSS, the reconciler, the scheduler), two busybox desktops under QEMU. Two agents sign in.
The watcher measures, first alone (the baseline) and then while the flooder floods:
- api: GET /api/v1/me/pools round trips;
- pixel: input-to-pixel latency, a key typed into its desktop's console until the
  FramebufferUpdate showing it arrives.
The flooder (its own process) first sends one 8 MiB frame (refused by the frame cap), then, in a
second session, dropped messages of several kinds (QEMU audio, empty ClientCutText, SetEncodings
with stripped entries) just under the violation budget, then frames at the size cap full of
pointer events that change nothing, as fast as the server takes them, until the end.
During the flood `shiftdesk serve` gets SIGTERM and the time until it exits is measured.

Last line: {"rss_growth_mib", "api_p99_s", "api_p99_baseline_s", "pixel_p99_s",
"pixel_p99_baseline_s", "flood_audit_rows", "sigterm_exit_s"}. Everything the run creates (the
serve process, domains, volumes, storage pool, the DC, files) is removed at the end, also when
the benchmark is interrupted or killed with SIGTERM; leftovers of an earlier run killed with
SIGKILL are swept at the start (bench/cleanup.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import connect as ws_connect  # noqa: E402

from bench import cleanup  # noqa: E402
from bench.connect import RAW, Reader, rfb_client_handshake  # noqa: E402
from bench.stats import percentile  # noqa: E402
from tests.integration.samba import MARK, SambaDC, kill_stale  # noqa: E402

SHIFTDESK = str(ROOT / ".venv" / "bin" / "shiftdesk")
PREFIX = "flood"  # instance names of this benchmark: flood<pid>
KEY_A, BACKSPACE = 0x61, 0xFF08


# --- the world: a DC, the control plane, two desktops ------------------------------------------


class World:
    """What one run creates, and how to remove every bit of it (bench/cleanup.py removes the
    libvirt objects and the data directory at exit, also after SIGTERM or SIGINT, and sweeps
    what runs killed with SIGKILL left)."""

    def __init__(self) -> None:
        self.instance = cleanup.run_instance(PREFIX)
        self.data_holder = cleanup.data_dir(self.instance)
        self.data = Path(self.data_holder.name)
        for old in Path(tempfile.gettempdir()).glob(f"{MARK}{PREFIX}*"):  # a killed run's DC (kill_stale stops it)
            shutil.rmtree(old, ignore_errors=True)
        self.dc = SambaDC(Path(tempfile.mkdtemp(prefix=f"{MARK}{self.instance}-")))
        self.serve: subprocess.Popen[bytes] | None = None
        self.port = _free_port()
        self.env: dict[str, str] = {}

    def start(self) -> None:
        kill_stale()
        self.dc.provision()
        self.dc.start()
        conn = self.dc.admin()
        ou = self.dc.add_ou(conn, "FloodBench")
        users = [self.dc.add_user(conn, ou, name, "Bench-pw-1234") for name in ("flooder", "watcher")]
        self.group = self.dc.add_group(conn, ou, "flood-agents", users)
        conn.unbind()
        self.env = {**os.environ, "SHIFTDESK_DATA_DIR": str(self.data), "SHIFTDESK_INSTANCE": self.instance,
                    "SHIFTDESK_IMAGES_DIR": str(ROOT / "images"), "SHIFTDESK_CACHE_DIR": str(ROOT / ".cache"),
                    "SHIFTDESK_API__PORT": str(self.port), "SHIFTDESK_LDAP__URL": self.dc.url,
                    "SHIFTDESK_LDAP__BASE_DN": self.dc.base_dn, "SHIFTDESK_LDAP__BIND_DN": self.dc.admin_dn,
                    "SHIFTDESK_LDAP__BIND_PASSWORD": self.dc.admin_password,
                    "SHIFTDESK_LDAP__CA_FILE": str(self.dc.tls.ca_cert)}
        subprocess.run([SHIFTDESK, "image", "build", "busybox-desktop"], env=self.env, check=True,
                       capture_output=True)
        self.serve = subprocess.Popen([SHIFTDESK, "serve"], env=self.env, stdout=subprocess.DEVNULL,
                                      stderr=open(self.dc.root / "serve.log", "wb"))  # noqa: SIM115
        _wait_for_port(self.port, timeout=120)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.data / "tls" / "ca.pem")

    @property
    def ca(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def admin_token(self) -> str:
        return subprocess.run([SHIFTDESK, "token"], env=self.env, check=True, capture_output=True,
                              text=True).stdout.strip()

    def rss_mib(self) -> float:
        assert self.serve is not None
        for line in Path(f"/proc/{self.serve.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def sigterm(self) -> float:
        """SIGTERM to `shiftdesk serve`; seconds until it has exited."""
        assert self.serve is not None
        began = time.monotonic()
        self.serve.send_signal(signal.SIGTERM)
        try:
            self.serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            self.serve.wait()
        return time.monotonic() - began

    def flood_rows(self, since: float) -> int:
        """Audit rows the flooder's sessions wrote (sign-in excluded) since SINCE (epoch seconds)."""
        db = sqlite3.connect(self.data / "shiftdesk.db")
        try:
            at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(since))
            (n,) = db.execute("SELECT count(*) FROM audit_events WHERE actor = 'flooder' AND at >= ? "
                              "AND action NOT LIKE 'auth.%'", (at,)).fetchone()
            return int(n)
        finally:
            db.close()

    def remove(self) -> None:
        if self.serve is not None and self.serve.poll() is None:
            self.serve.kill()
            self.serve.wait()
        with contextlib.suppress(Exception):
            self.dc.stop()
        shutil.rmtree(self.dc.root, ignore_errors=True)
        cleanup.purge(self.instance)  # domains, volumes, storage pool, data directory


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit(f"bench: shiftdesk serve did not listen on {port}")


# --- agents -----------------------------------------------------------------------------------------


async def sign_in(http: httpx.AsyncClient, user: str) -> str:
    r = await http.post("/api/v1/auth/login", json={"username": user, "password": "Bench-pw-1234"})
    r.raise_for_status()
    return str(r.json()["token"])


async def open_display(base: str, ca: ssl.SSLContext, http: httpx.AsyncClient, token: str):  # noqa: ANN201
    for _ in range(300):
        r = await http.post("/api/v1/me/pools/flood/connect", headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 200:
            break
        await asyncio.sleep(1)  # desktops still booting
    r.raise_for_status()
    url = base.replace("https", "wss") + f"/gateway?ticket={r.json()['ticket']}"
    return ws_connect(url, ssl=ca, origin=base, additional_headers={"Cookie": f"sd_session={token}"},
                      max_size=None, subprotocols=["binary"])


async def next_update(reader: Reader) -> None:
    """Skip to the end of the next FramebufferUpdate (raw rectangles only, as negotiated)."""
    while (kind := (await reader.read(1))[0]) == 2:
        pass
    assert kind == 0, kind
    (count,) = struct.unpack(">xH", await reader.read(3))
    for _ in range(count):
        _, _, w, h, encoding = struct.unpack(">HHHHi", await reader.read(12))
        await reader.read(w * h * 4 if encoding == 0 else 0)


def key(sym: int) -> bytes:
    return struct.pack(">BBxxI", 4, 1, sym) + struct.pack(">BBxxI", 4, 0, sym)


async def watch(base: str, ca: ssl.SSLContext, token: str, seconds: float) -> tuple[list[float], list[float]]:
    """API round trips and input-to-pixel latencies for SECONDS."""
    api: list[float] = []
    pixel: list[float] = []
    async with httpx.AsyncClient(base_url=base, verify=ca, timeout=30) as http, \
            await open_display(base, ca, http, token) as ws:
        reader = Reader(ws.recv)
        w, h = await rfb_client_handshake(reader, ws.send)
        await ws.send(RAW + struct.pack(">BBHHHH", 3, 0, 0, 0, w, h))
        await next_update(reader)
        deadline, n = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            began = time.perf_counter()
            (await http.get("/api/v1/me/pools", headers={"Authorization": f"Bearer {token}"})).raise_for_status()
            api.append(time.perf_counter() - began)
            began = time.perf_counter()
            await ws.send(key(KEY_A if n % 2 == 0 else BACKSPACE) + struct.pack(">BBHHHH", 3, 1, 0, 0, w, h))
            await asyncio.wait_for(next_update(reader), 10)
            pixel.append(time.perf_counter() - began)
            n += 1
            await asyncio.sleep(0.05)
    return api, pixel


def flood(base: str, ca_file: str, token: str, seconds: float, budget: int, cap: int) -> None:
    """The flooder's process: see the module docstring."""
    asyncio.run(_flood(base, ssl.create_default_context(cafile=ca_file), token, seconds, budget, cap))


async def _flood(base: str, ca: ssl.SSLContext, token: str, seconds: float, budget: int, cap: int) -> None:
    audio, cut = b"\xff\x01\x00\x01", struct.pack(">Bxxxi", 6, 0)
    stripped = struct.pack(">BxH", 2, 8) + struct.pack(">8i", -259, -305, -307, -309, -311, -312, -313, 50)
    still = struct.pack(">BBHH", 5, 0, 7, 7)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, verify=ca, timeout=30) as http:
        with contextlib.suppress(Exception):  # one 8 MiB frame: refused by the frame cap
            async with await open_display(base, ca, http, token) as ws:
                await rfb_client_handshake(Reader(ws.recv), ws.send)
                await ws.send(audio * (2 << 20))
                await ws.recv()
        try:
            async with await open_display(base, ca, http, token) as ws:
                await rfb_client_handshake(Reader(ws.recv), ws.send)
                third = (budget - 8) // 3  # dropped messages of three kinds, just under the budget
                await ws.send((audio * third + cut * third + stripped * third)[:cap])
                frame = (still * (cap // len(still)))[:cap]
                while time.monotonic() < deadline:  # then frames at the cap, as fast as the server takes them
                    await ws.send(frame)
        except Exception as err:  # noqa: BLE001 - how the flood ended is reported, whatever it was
            print(f"flooder: {type(err).__name__}: {err}", file=sys.stderr)


# --- the run -----------------------------------------------------------------------------------------


async def run(world: World, seconds: float) -> dict[str, float]:
    admin = world.admin_token()
    async with httpx.AsyncClient(base_url=world.base, verify=world.ca, timeout=60) as http:
        r = await http.post("/api/v1/pools", headers={"Authorization": f"Bearer {admin}"},
                            json={"name": "flood", "image": "busybox-desktop", "size": 2, "groups": [world.group]})
        r.raise_for_status()
        flooder, watcher = await sign_in(http, "flooder"), await sign_in(http, "watcher")
    api_base, pixel_base = await watch(world.base, world.ca, watcher, seconds)
    rss_before = world.rss_mib()
    print(f"baseline: api p99 {percentile(api_base, .99):.4f} s, pixel p99 {percentile(pixel_base, .99):.4f} s, "
          f"rss {rss_before:.0f} MiB", file=sys.stderr)
    began = time.time()
    proc = multiprocessing.Process(target=flood, args=(world.base, world.ca_file, flooder, seconds + 15, 256,
                                                       64 * 1024), daemon=True)
    proc.start()
    rss_peak = rss_before
    watching = asyncio.ensure_future(watch(world.base, world.ca, watcher, seconds))
    while not watching.done():
        rss_peak = max(rss_peak, world.rss_mib())
        await asyncio.sleep(0.2)
    api_flood, pixel_flood = watching.result()
    rss_peak = max(rss_peak, world.rss_mib())
    exit_s = world.sigterm()  # while the flood goes on
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
    return {"rss_growth_mib": round(rss_peak - rss_before, 1),
            "api_p99_s": round(percentile(api_flood, .99), 4),
            "api_p99_baseline_s": round(percentile(api_base, .99), 4),
            "pixel_p99_s": round(percentile(pixel_flood, .99), 4),
            "pixel_p99_baseline_s": round(percentile(pixel_base, .99), 4),
            "flood_audit_rows": world.flood_rows(began), "sigterm_exit_s": round(exit_s, 2),
            "samples": min(len(api_flood), len(pixel_flood), len(api_base), len(pixel_base))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    args = parser.parse_args()
    world = World()
    try:
        world.start()
        result = asyncio.run(run(world, args.seconds))
    finally:
        world.remove()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
