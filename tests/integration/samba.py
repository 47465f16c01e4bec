"""The test suites' Samba AD DC: the driver's SambaDC (controlplane/drivers/ldap/samba_dc.py) plus
a marker so a DC left by a crashed run is stopped before the next one starts (the ports are fixed)."""

from __future__ import annotations

from pathlib import Path

from controlplane.drivers.ldap import samba_dc

MARK = "shiftdesk-samba-"
STALE = Path("/run/shiftdesk-test-samba")  # holds the path of the running test DC's pid file


class SambaDC(samba_dc.SambaDC):
    def __init__(self, root: Path) -> None:
        assert MARK in str(root), "the root path carries the marker used to find stale DCs"
        super().__init__(root)

    def start(self, timeout: float = 60) -> None:
        kill_stale()
        super().start(timeout)
        STALE.write_text(str(self.pid_file))

    def stop(self) -> None:
        super().stop()
        STALE.unlink(missing_ok=True)


def kill_stale() -> None:
    """Stop a DC left by a crashed run (samba renames its processes, so go by the pid it wrote)."""
    if STALE.exists():
        samba_dc.terminate(Path(STALE.read_text().strip()))
        STALE.unlink(missing_ok=True)
