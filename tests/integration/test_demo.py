"""`make run` as a newcomer meets it: scripts/demo.sh brings up the demo AD (a real Samba DC), the
example policies, two demo pools on real QEMU and `shiftdesk serve`; the printed sign-ins work:
an agent gets a desktop of their team's pool and its RFB stream through the gateway, the admin
gets the admin API and the console. Ctrl-C stops the server and the DC; a second run keeps the
sign-ins (not printed again) and changes nothing.

The demo runs in a network namespace of its own: the DC's ports are fixed, and the test suites'
DC may be serving them on the host's loopback at the same time. The test's HTTP client works in
that namespace from a thread that joined it (setns is per thread).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import signal
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import database_env
from tests.integration.conftest import ROOT, purge

CLONE_NEWNET = 0x40000000
PORT = 8600
T = TypeVar("T")


class Namespace:
    """A network namespace with loopback up, and a worker thread inside it for the test's client."""

    def __init__(self) -> None:
        self.name = f"sd-demo-{secrets.token_hex(3)}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.pool = ThreadPoolExecutor(max_workers=1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def run(self, fn: Callable[[], T]) -> T:
        return self.pool.submit(fn).result()

    def close(self) -> None:
        self.pool.shutdown()
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def netns() -> Iterator[Namespace]:
    ns = Namespace()
    yield ns
    ns.close()


def demo_env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTDESK_")}
    env.update(SHIFTDESK_DATA_DIR=str(settings.data_dir), SHIFTDESK_INSTANCE=settings.instance,
               SHIFTDESK_CACHE_DIR=str(settings.cache_dir), SHIFTDESK_IMAGES_DIR=str(settings.images_dir),
               SHIFTDESK_API__PORT=str(PORT), **database_env(settings))
    return env


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def test_make_run_demo_signs_in_agents_and_the_admin(real_settings, netns):
    settings = real_settings
    out = settings.data_dir.parent / "demo.out"
    base = f"https://127.0.0.1:{PORT}"
    ca = settings.data_dir / "tls" / "ca.pem"

    def tls() -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(ca))
    with out.open("w") as log:
        demo = subprocess.Popen(["ip", "netns", "exec", netns.name, "bash", "scripts/demo.sh"], cwd=ROOT,
                                env=demo_env(settings), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool | None:
            assert demo.poll() is None, out.read_text()[-3000:]
            try:
                return netns.run(lambda: httpx.get(f"{base}/healthz", verify=tls(), timeout=3)).is_success or None
            except (httpx.HTTPError, FileNotFoundError):
                return None

        wait_for("the demo serving", healthy, 600)
        passwords = json.loads((settings.data_dir / "demo" / "sign-ins.json").read_text())
        printed = out.read_text()
        for user in ("ada", "sam", "sara", "sue"):  # every sign-in printed, exactly once
            assert printed.count(passwords[user]) == 1, user
        for secret in ("sign-ins.json", "ldap.env"):
            assert (settings.data_dir / "demo" / secret).stat().st_mode & 0o777 == 0o600

        def client(user: str) -> httpx.Client:
            c = httpx.Client(base_url=base, verify=tls(), timeout=30)
            r = c.post("/api/v1/auth/login", json={"username": user, "password": passwords[user]})
            assert r.status_code == 200, r.text
            c.headers["Authorization"] = f"Bearer {r.json()['token']}"
            c.role = r.json()["role"]  # type: ignore[attr-defined]
            return c

        def agent_desktop() -> tuple[str, list[dict], str]:
            sam = client("sam")
            pools = sam.get("/api/v1/me/pools").json()

            def ticket() -> dict | None:
                r = sam.post("/api/v1/me/pools/sales/connect")
                return r.json() if r.status_code == 200 else None

            got = wait_for("a sales desktop for sam", ticket, 300)
            with ws_connect(f"wss://127.0.0.1:{PORT}/gateway?ticket={got['ticket']}", ssl=tls(), origin=base,
                            additional_headers={"Authorization": sam.headers["Authorization"]},
                            subprotocols=["binary"], open_timeout=20) as ws:
                first = ws.recv(timeout=30)
            return sam.role, pools, bytes(first)[:12].decode()

        role, pools, rfb = netns.run(agent_desktop)
        assert (role, pools) == ("agent", [{"name": "sales"}])
        assert re.fullmatch(r"RFB 003\.00\d\n", rfb), rfb

        def admin_view() -> tuple[str, set[str], int, str]:
            ada, sue = client("ada"), client("sue")
            names = {p["name"] for p in ada.get("/api/v1/pools").json()}
            console = ada.get("/console/")
            return ada.role, names, console.status_code, sue.get("/api/v1/me/pools").text

        role, names, console, sue_pools = netns.run(admin_view)
        assert (role, names, console) == ("admin", {"sales", "support"}, 200)
        assert json.loads(sue_pools) == [{"name": "support"}]
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        demo.wait(timeout=60)
        purge(settings)
    pid_file = settings.data_dir / "demo" / "samba" / "run" / "samba.pid"
    assert not pid_file.exists() or not Path(f"/proc/{pid_file.read_text().strip()}").exists(), "DC still running"

    again = subprocess.run(["ip", "netns", "exec", netns.name, ".venv/bin/shiftdesk", "demo", "up"], cwd=ROOT,
                           env=demo_env(settings), capture_output=True, text=True, timeout=300, check=False)
    subprocess.run(["ip", "netns", "exec", netns.name, ".venv/bin/shiftdesk", "demo", "stop"], cwd=ROOT,
                   env=demo_env(settings), capture_output=True, timeout=60, check=False)
    assert again.returncode == 0, again.stderr
    assert "demo sign-ins: ada, sam, sara, sue" in again.stdout
    assert not any(p in again.stdout + again.stderr for p in passwords.values())
    assert "created" not in again.stderr and "applied" not in again.stderr  # nothing changed
