"""What QEMU, running as its own unprivileged user, may reach in DATA_DIR: search, nothing more.

libvirt's DAC driver (qemu.conf `dynamic_ownership`) gives QEMU's user each file a domain uses
(overlay, golden image, kernel, initrd, fw_cfg blobs) while the domain runs; it does not open
the directories on the way. So DATA_DIR stays root's, and it and each directory below it on the
way to those files get QEMU's group with search only (0710): QEMU can open what libvirt labelled
for it and list nothing. RUN_DIR also lets QEMU create its VNC socket (0770), which the driver
then closes to everyone but root and QEMU's user (0600). Other users on the host get nothing.

When QEMU runs as root, or the connection has no DAC model (libvirt's test driver), nothing is
granted and the directories stay 0700.
"""

from __future__ import annotations

import os
import stat
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

SEARCH = 0o710
RUN = 0o770
PRIVATE = 0o700
SOCKET = 0o600


@dataclass(frozen=True)
class QemuUser:
    """The uid:gid libvirt runs QEMU as (qemu.conf `user`/`group`), from the DAC base label."""

    uid: int
    gid: int

    @classmethod
    def from_capabilities(cls, xml: str, domain_type: str = "qemu") -> QemuUser | None:
        """None when the connection has no DAC model or the label is not numeric."""
        root = ET.fromstring(xml)  # noqa: S314 - from our own libvirtd
        for model in root.findall("host/secmodel"):
            if model.findtext("model") != "dac":
                continue
            labels = {el.get("type"): (el.text or "") for el in model.findall("baselabel")}
            label = labels.get(domain_type) or labels.get("qemu") or ""
            uid, _, gid = label.partition(":")
            try:
                return cls(uid=int(uid.lstrip("+")), gid=int(gid.lstrip("+")))
            except ValueError:
                return None
        return None

    @property
    def is_root(self) -> bool:
        return self.uid == 0 or self.gid == 0


def _set(path: Path, gid: int, mode: int) -> None:
    st = path.stat()
    if st.st_gid != gid or stat.S_IMODE(st.st_mode) != mode:
        os.chown(path, -1, gid)
        path.chmod(mode)


def grant_search(root: Path, target: Path, gid: int) -> bool:
    """ROOT and each directory below it down to TARGET (a directory, made if missing): group GID,
    mode 0710.

    A TARGET outside ROOT gets nothing (False), and is not made: we never open up directories we
    do not own (the host agent grants what the control plane names: host_files.py).
    """
    root, target = root.resolve(), target.resolve()
    if target != root and root not in target.parents:
        return False
    target.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    _set(root, gid, SEARCH)
    here = root
    for part in target.relative_to(root).parts:
        here = here / part
        _set(here, gid, SEARCH)
    return True


def prepare_run_dir(run_dir: Path, qemu: QemuUser | None) -> None:
    """RUN_DIR: 0770 root:QEMU's group when QEMU is not root, else 0700 root."""
    run_dir.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    if qemu is None or qemu.is_root:
        _set(run_dir, run_dir.stat().st_gid, PRIVATE)
    else:
        _set(run_dir, qemu.gid, RUN)


def close_socket(path: Path) -> None:
    """A VNC socket QEMU created (with its umask): its owner and root only."""
    try:
        if stat.S_IMODE(path.stat().st_mode) != SOCKET:
            path.chmod(SOCKET)
    except FileNotFoundError:
        pass
