"""The host daemons of the desktop network (dnsmasq, Squid) are found by their pid files, and
trusted only when the process behind the pid is still the one we started (its command line
names our config), so a stale pid file never makes us signal a stranger."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def pid_of(pid_file: Path, marker: bytes) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if marker in cmdline else None


def stop(pid: int | None, sig: signal.Signals = signal.SIGTERM, wait_s: float = 5.0) -> None:
    """Signal PID and wait for it to go; SIGKILL after WAIT_S."""
    if pid is None:
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + wait_s
    while Path(f"/proc/{pid}").exists():
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)
