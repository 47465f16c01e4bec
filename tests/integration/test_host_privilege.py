"""Least privilege on a real host: a running desktop's QEMU is not root, is confined, and its VNC
socket is reachable by root (the gateway) and by nobody else on the host."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

from controlplane.domain.desktop import DesktopState as S
from controlplane.services import desktops, pools
from controlplane.services.reconciler import Reconciler
from tests.integration.rfb import grab_frame

CONNECT = "import socket, sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])"


def qemu_status(name: str) -> dict[str, str]:
    pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line) | {"pid": pid}


def can_connect_as(user: str, socket_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", "-c", CONNECT, str(socket_path)], user=user, group="nogroup",
                          extra_groups=[], capture_output=True, text=True, check=False, timeout=30)


def test_a_running_desktop_is_unprivileged_confined_and_reachable_only_by_root(real_ctx, real_settings, golden):
    hv = real_ctx.hypervisor
    pools.create(real_ctx, name="priv", image="busybox-desktop", size=1, actor="test")
    rec = Reconciler(real_ctx)
    try:
        assert rec.run_until_converged(timeout=180), "desktop did not become ready"
        [(row, _)] = desktops.list_all(real_ctx)
        assert row.state == S.READY
        status = qemu_status(row.name)

        uids, gids = status["Uid"].split(), status["Gid"].split()
        assert "0" not in uids, f"QEMU runs as root: Uid {uids}"
        assert "0" not in gids and "0" not in status["Groups"].split(), f"QEMU has root's group: {status}"
        assert int(status["CapEff"], 16) == 0, "QEMU kept capabilities"
        assert status["Seccomp"].strip() == "2", "QEMU runs without its seccomp sandbox"
        assert status["NoNewPrivs"].strip() == "1"
        # DAC labelling: libvirt gave QEMU's user its own overlay, and only while it runs
        assert Path(row.disk_path).stat().st_uid == int(uids[0])

        sock = hv.vnc_socket(row.name)
        st = sock.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert st.st_mode & 0o077 == 0, f"VNC socket mode {oct(st.st_mode)}"
        assert hv.run_dir.stat().st_mode & 0o007 == 0 and real_settings.data_dir.stat().st_mode & 0o007 == 0
        refused = can_connect_as("nobody", sock)
        assert refused.returncode != 0 and "PermissionError" in refused.stderr, refused
        frame = grab_frame(str(sock))  # root, as the gateway, still gets pixels
        assert frame.width >= 640
    finally:
        pools.delete(real_ctx, "priv", actor="test")
        assert rec.run_until_converged(timeout=180)
        rec.close()
