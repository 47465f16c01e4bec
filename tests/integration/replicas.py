"""Control-plane replicas as real processes: `shiftdesk serve` on this machine's libvirt, sharing a
database and a data directory, one of them under another hostname (its own UTS namespace) so that
leases cannot tell it is on this machine: only the lease running out hands work from one to the
other, as between two machines. Used by tests/integration/test_replicas.py and bench/replicas.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from controlplane.config import Settings
from controlplane.db import leases
from controlplane.db.engine import session_scope
from tests.conftest import database_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    """One `shiftdesk serve` process, in a session of its own (its whole group can be killed)."""

    def __init__(self, settings: Settings, log: Path, *, hostname: str | None = None, lease_ttl_s: float = 15) -> None:
        self.port = free_port()
        self.hostname = hostname or socket.gethostname()
        env = dict(os.environ, SHIFTDESK_DATA_DIR=str(settings.data_dir), SHIFTDESK_INSTANCE=settings.instance,
                   SHIFTDESK_LIBVIRT__URI="qemu:///system", SHIFTDESK_LIBVIRT__HOST_NAME=socket.gethostname(),
                   SHIFTDESK_IMAGES_DIR=str(settings.images_dir), SHIFTDESK_CACHE_DIR=str(settings.cache_dir),
                   SHIFTDESK_RECONCILER__LEASE_TTL_S=str(lease_ttl_s),
                   SHIFTDESK_RECONCILER__BOOT_TIMEOUT_S=str(settings.reconciler.boot_timeout_s),
                   **database_env(settings))
        # the start-up selftest (define+undefine under 50 ms) is not what this is about, and a busy CI
        # machine can miss it
        command = [sys.executable, "-m", "controlplane.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                   "--skip-selftest"]
        if hostname is not None:
            command = ["unshare", "--uts", "--", "sh", "-c", f'hostname {hostname} && exec "$@"', "sh", *command]
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"replica exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", verify=False, timeout=2).status_code == 200:  # noqa: S501 - loopback
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"replica never answered: {self.log.read_text()[-2000:]}")

    def leads(self, engine) -> bool:
        """Whether this process holds the reconciler lease now."""
        with session_scope(engine) as session:
            holder = leases.holder_of(session=session, name="reconciler") or ""
        if holder.startswith(f"{self.hostname}:"):
            return self.hostname != socket.gethostname() or holder.split(":")[1] == str(self.proc.pid)
        return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send SIG to the whole process group and wait for it (SIGKILL after 30 s of anything else)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def wait_for(what: str, check, timeout: float, every: float = 0.2):
    """CHECK's first truthy result, polled every EVERY seconds; AssertionError after TIMEOUT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
