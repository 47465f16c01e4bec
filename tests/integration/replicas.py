"""Control-plane replicas as real processes: `shiftdesk serve` on this machine's libvirt, sharing a
database and a data directory, one of them under another hostname (its own UTS namespace) so that
leases cannot tell it is on this machine: only the lease running out hands work from one to the
other, as between two machines. Used by tests/integration/test_replicas.py and bench/replicas.py."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
from websockets.asyncio.client import connect as ws_connect

from controlplane.config import Settings
from controlplane.db import leases
from controlplane.db import sessions as api_sessions
from controlplane.db.engine import session_scope
from controlplane.db.models import ApiSession
from controlplane.domain.groups import group_ref
from controlplane.services import tokens
from controlplane.services.identity import AGENT
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


def agent_token(ctx, user: str, groups: list[str]) -> str:
    """A signed-in agent (what a directory sign-in leaves: a token with its canonical groups and its
    session row)."""
    now = ctx.clock.now()
    token, claims = tokens.issue(ctx.auth.key, sub=user, role=AGENT, groups=[group_ref(g) for g in groups], now=now,
                                 ttl_s=600)
    with session_scope(ctx.engine) as session:
        api_sessions.create(session=session, api_session=ApiSession(
            jti=claims.jti, username=user, role=AGENT, issued_at=now, expires_at=now + timedelta(seconds=600)))
    return token


def first_update_through_gateway(replica: Replica, token: str, ticket: str, ca: Path) -> tuple[int, int]:
    """The RFB handshake through REPLICA's gateway and the first framebuffer update: the screen's size.
    websockets' asyncio client, not its sync one: the sync client reads its TLS socket on a thread
    of its own while the caller writes it, and under load its upgrade request was lost on the way
    (sent 597 bytes: the TLS handshake alone), leaving the test blocked on that thread for good."""
    return asyncio.run(_first_update(replica, token, ticket, ca))


async def _first_update(replica: Replica, token: str, ticket: str, ca: Path) -> tuple[int, int]:
    context = ssl.create_default_context(cafile=str(ca))
    buffer = bytearray()
    async with ws_connect(f"wss://127.0.0.1:{replica.port}/gateway?ticket={ticket}", ssl=context,
                          origin=replica.url, additional_headers={"Cookie": f"sd_session={token}"},
                          open_timeout=10) as ws:

        async def read(n: int) -> bytes:
            while len(buffer) < n:
                buffer.extend(await asyncio.wait_for(ws.recv(), 30))
            out = bytes(buffer[:n])
            del buffer[:n]
            return out

        assert await read(12) == b"RFB 003.008\n"
        await ws.send(b"RFB 003.008\n")
        assert await read(2) == b"\x01\x01"  # security None only
        await ws.send(b"\x01")
        assert await read(4) == b"\0\0\0\0"
        await ws.send(b"\x01")
        width, height = struct.unpack(">HH", await read(4))
        await read(16)
        await read(struct.unpack(">I", await read(4))[0])
        raw_then_frame = struct.pack(">BxHi", 2, 1, 0) + struct.pack(">BBHHHH", 3, 0, 0, 0, width, height)
        await ws.send(raw_then_frame)
        assert await read(1) == b"\x00", "the first message was not a framebuffer update"
    return width, height
