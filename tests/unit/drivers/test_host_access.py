"""What the libvirt driver lets QEMU and the gateway reach on the host, and nothing more."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from controlplane.drivers.libvirt.driver import LibvirtHypervisor
from controlplane.drivers.libvirt.host_access import QemuUser, grant_search, prepare_run_dir
from controlplane.errors import PermanentError

QEMU = QemuUser(uid=64055, gid=64055)

CAPS = """<capabilities><host>
  <secmodel><model>none</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi>
    <baselabel type='kvm'>+64055:+107</baselabel><baselabel type='qemu'>+64055:+64055</baselabel>
  </secmodel></host></capabilities>"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hypervisor(tmp_path: Path) -> LibvirtHypervisor:
    return LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                             overlay_dir=tmp_path / "data" / "desktops", run_dir=tmp_path / "data" / "run",
                             data_dir=tmp_path / "data", readiness="running")


def test_vnc_socket_is_only_for_desktops_of_this_installation_inside_the_run_dir(tmp_path):
    hv = hypervisor(tmp_path)
    assert hv.vnc_socket("sd-main-sales-0a1b2c") == tmp_path / "data" / "run" / "sd-main-sales-0a1b2c.vnc"
    for bad in ("../../etc/shadow", "sd-main-sales-0a1b2c/../../x", "sd-main-../../../x-0a1b2c",
                "sd-other-sales-0a1b2c", "sd-main-Sales-0a1b2c", "sd-main-sales--0a1b2c", "sd-main-sales",
                "/run/other.vnc", "", "sd-main-sales-0a1b2c\n", "sd-main-selftest"):
        with pytest.raises(PermanentError):
            hv.vnc_socket(bad)


def test_who_qemu_runs_as_comes_from_libvirts_dac_label():
    assert QemuUser.from_capabilities(CAPS) == QEMU
    assert QemuUser.from_capabilities(CAPS, "kvm") == QemuUser(uid=64055, gid=107)
    assert QemuUser.from_capabilities(CAPS.replace("+64055:+64055", "+0:+0")).is_root
    assert QemuUser.from_capabilities("<capabilities><host/></capabilities>") is None


def test_qemus_group_may_search_down_to_its_files_and_nothing_outside(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    images = data / "images" / "busybox" / "abc"
    images.mkdir(parents=True, mode=0o700)
    outside.mkdir(mode=0o700)
    (data / "shiftdesk.db").touch(mode=0o600)
    assert grant_search(data, images, QEMU.gid)
    for d in (data, data / "images", data / "images" / "busybox", images):
        assert (mode(d), d.stat().st_gid) == (0o710, QEMU.gid), d
    assert mode(data / "shiftdesk.db") == 0o600 and (data / "shiftdesk.db").stat().st_gid != QEMU.gid
    assert not grant_search(data, outside, QEMU.gid)
    assert not grant_search(data, data / ".." / "elsewhere", QEMU.gid)
    assert (mode(outside), outside.stat().st_gid) == (0o700, os.getegid())
    assert not grant_search(data, tmp_path / "nowhere" / "x", QEMU.gid)  # asked by another host's control plane
    assert not (tmp_path / "nowhere").exists()
    assert grant_search(data, data / "hosts" / "b" / "run", QEMU.gid)  # made, then granted
    assert (mode(data / "hosts" / "b" / "run"), (data / "hosts").stat().st_gid) == (0o710, QEMU.gid)


def test_run_dir_lets_qemu_create_sockets_only_when_qemu_is_not_root(tmp_path):
    prepare_run_dir(tmp_path / "a", QEMU)
    assert (mode(tmp_path / "a"), (tmp_path / "a").stat().st_gid) == (0o770, QEMU.gid)
    prepare_run_dir(tmp_path / "b", QemuUser(uid=0, gid=0))
    prepare_run_dir(tmp_path / "c", None)
    assert mode(tmp_path / "b") == mode(tmp_path / "c") == 0o700


def test_without_an_unprivileged_qemu_the_run_dir_stays_root_only(tmp_path):
    hv = hypervisor(tmp_path)
    hv.conn  # noqa: B018 - connect (libvirt's test driver has no DAC model)
    assert hv.qemu is None
    assert mode(hv.run_dir) == 0o700
