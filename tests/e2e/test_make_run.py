"""A newcomer's first minutes: a fresh checkout (a `git clone` of this repository's HEAD), `make run`
in the background, then a scripted Chromium signs in to the portal as the demo agent printed by
`make run` and sees the pixels of their desktop, and to the console as the printed admin. Underneath:
a venv built from requirements.lock, the busybox image, the demo AD (a real Samba DC), the example
policies, two demo pools on real QEMU and `shiftdesk serve`. Each sign-in is printed exactly once
and kept 0600; Ctrl-C stops the server and the DC; `demo up` again keeps the sign-ins, prints none
and changes nothing.

`make run` is `make setup` (which needs the network: PyPI, npm, Debian) and the demo; the test
runs the two apart, the demo in a network namespace of its own: the DC's ports are fixed, and the suite's DC may be
serving them on the host's loopback at the same time. The test's HTTP client and browser work in
that namespace from a thread that joined it (setns is per thread; the browser's processes are
forked from that thread and inherit it). Image builds and downloads share the suite's cache.
"""

from __future__ import annotations

import ctypes
import io
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

from tests.e2e.conftest import ARGS, CHROMIUM
from tests.integration.conftest import ROOT, purge

CLONE_NEWNET = 0x40000000
PORT = 8600  # scripts/demo.sh's default
T = TypeVar("T")


class Namespace:
    """A network namespace with loopback up, and a worker thread inside it for the test's clients."""

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


@pytest.fixture
def checkout(real_settings) -> Path:
    """A fresh clone, where QEMU (libvirt-qemu) can reach its data (the parent directory is 0711)."""
    where = real_settings.data_dir.parent / "checkout"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    return where


def make_env(settings) -> dict[str, str]:
    """A newcomer's environment: none of the suite's SHIFTDESK_* settings, only the shared cache."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTDESK_")}
    env["SHIFTDESK_CACHE_DIR"] = str(settings.cache_dir)
    return env


def wait_for(what: str, check: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := check()) is not None:
            return value
        time.sleep(1)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def printed_sign_ins(output: str) -> dict[str, str]:
    """The demo sign-ins from `make run`'s table: user -> password."""
    rows = re.findall(r"^[│|]\s*(ada|sam|sara|sue)\s*[│|]\s*(\S+)\s*[│|]", output, re.MULTILINE)
    return dict(rows)


def canvas_colours(page) -> int:
    from PIL import Image

    shot = page.locator("#screen canvas").screenshot()
    return len(set(Image.open(io.BytesIO(shot)).convert("RGB").getdata()))


def browse(base: str, ca: Path, agent: tuple[str, str], admin: tuple[str, str]) -> dict[str, object]:
    """In the namespace: the agent signs in to the portal and sees a desktop, the admin to the
    console and sees the demo pools. The browser trusts nothing but the run's own CA (checked
    with httpx first), so it is told to accept the certificate the way a newcomer clicks through."""
    from playwright.sync_api import sync_playwright

    httpx.get(f"{base}/healthz", verify=ssl.create_default_context(cafile=ca), timeout=10).raise_for_status()
    seen: dict[str, object] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 720}).new_page()
            page.goto(f"{base}/portal/")
            page.fill("#username", agent[0])
            page.fill("#password", agent[1])
            page.click("#login-button")
            page.wait_for_selector("#status:has-text('Connected')", timeout=120_000)
            page.wait_for_timeout(1500)
            seen["colours"] = canvas_colours(page)
            console = browser.new_context(ignore_https_errors=True).new_page()
            console.goto(f"{base}/console/")
            console.fill("#username", admin[0])
            console.fill("#password", admin[1])
            console.click("#login button[type=submit]")
            console.wait_for_selector("#pool-rows tr", timeout=30_000)
            seen["pools"] = console.locator("#pool-rows tr td:first-child").all_text_contents()
        finally:
            browser.close()
    return seen


@pytest.mark.timeout(1500)
def test_a_newcomer_goes_from_clone_to_a_desktop_and_the_console_with_make_run(real_settings, golden, checkout,
                                                                                netns):
    """GOLDEN: the suite's own build of the busybox image leaves its Debian packages in the shared
    cache, which the demo's image build needs: its namespace has no network to download them."""
    settings = real_settings
    out = checkout.parent / "make-run.out"
    data = checkout / ".cache" / "run-data"
    instance = f"nc{secrets.token_hex(3)}"
    base = f"https://127.0.0.1:{PORT}"
    with out.open("w") as log:  # make run = make setup (needs the network: PyPI, npm) + the demo
        subprocess.run(["make", "setup"], cwd=checkout, env=make_env(settings), stdout=log, stderr=subprocess.STDOUT,
                       check=True, timeout=900)
        run = subprocess.Popen(["ip", "netns", "exec", netns.name, "make", "run", f"RUN_INSTANCE={instance}"],
                               cwd=checkout, env=make_env(settings), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    purge_after = real_settings.model_copy(update={"instance": instance, "data_dir": data})
    try:
        def serving() -> bool | None:
            assert run.poll() is None, out.read_text()[-3000:]
            return _healthy(netns, base, data)

        wait_for("make run to set up, build and serve", serving, 900)
        printed = out.read_text()
        sign_ins = printed_sign_ins(printed)
        assert set(sign_ins) == {"ada", "sam", "sara", "sue"}, printed[-3000:]
        kept = json.loads((data / "demo" / "sign-ins.json").read_text())
        assert {user: kept[user] for user in sign_ins} == sign_ins
        for user in sign_ins:  # every sign-in printed exactly once
            assert printed.count(sign_ins[user]) == 1, user
        for secret in ("sign-ins.json", "ldap.env"):
            assert (data / "demo" / secret).stat().st_mode & 0o777 == 0o600

        seen = netns.run(lambda: browse(base, data / "tls" / "ca.pem", ("sam", sign_ins["sam"]),
                                        ("ada", sign_ins["ada"])))
        assert seen["colours"] > 2, "the portal's canvas shows no desktop"
        assert sorted(seen["pools"]) == ["sales", "support"], seen

        def support_only() -> str:
            c = httpx.Client(base_url=base, verify=ssl.create_default_context(cafile=data / "tls" / "ca.pem"))
            r = c.post("/api/v1/auth/login", json={"username": "sue", "password": sign_ins["sue"]})
            c.headers["Authorization"] = f"Bearer {r.json()['token']}"
            return c.get("/api/v1/me/pools").text
        assert json.loads(netns.run(support_only)) == [{"name": "support"}]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
            run.wait(timeout=60)
        purge(purge_after)
    pid_file = data / "demo" / "samba" / "run" / "samba.pid"
    assert not pid_file.exists() or not Path(f"/proc/{pid_file.read_text().strip()}").exists(), "DC still running"

    env = {**make_env(settings), "SHIFTDESK_DATA_DIR": str(data), "SHIFTDESK_INSTANCE": instance}
    shiftdesk = ["ip", "netns", "exec", netns.name, ".venv/bin/shiftdesk"]
    again = subprocess.run([*shiftdesk, "demo", "up"], cwd=checkout, env=env, capture_output=True, text=True,
                           timeout=300, check=False)
    subprocess.run([*shiftdesk, "demo", "stop"], cwd=checkout, env=env, capture_output=True, timeout=60, check=False)
    purge(purge_after)
    assert again.returncode == 0, again.stderr
    assert "demo sign-ins: ada, sam, sara, sue" in again.stdout
    assert not any(p in again.stdout + again.stderr for p in sign_ins.values())
    assert "created" not in again.stderr and "applied" not in again.stderr  # nothing changed


def _healthy(netns: Namespace, base: str, data: Path) -> bool | None:
    ca = data / "tls" / "ca.pem"
    if not ca.exists():
        return None
    try:
        ok = netns.run(lambda: httpx.get(f"{base}/healthz", verify=ssl.create_default_context(cafile=ca),
                                         timeout=3).is_success)
    except (httpx.HTTPError, OSError):
        return None
    return ok or None
