"""Real desktops on qemu:///system: boot from the golden image, show pixels (over VNC and as the
console's screenshot through libvirt), leave no trace."""

from __future__ import annotations

import io
import subprocess
import xml.etree.ElementTree as ET

import libvirt
from PIL import Image

from controlplane.domain.desktop import DesktopState as S
from controlplane.services import desktops, pools
from controlplane.services.reconciler import Reconciler
from tests.integration.conftest import tagged_domains
from tests.integration.rfb import grab_frame


def test_two_desktops_boot_show_pixels_and_vanish(real_ctx, real_settings, golden):
    hv = real_ctx.hypervisor
    pools.create(real_ctx, name="agents", image="busybox-desktop", size=2, clone="cold", actor="test")
    rec = Reconciler(real_ctx)
    assert rec.run_until_converged(timeout=180), "desktops did not become ready"
    rows = [d for d, _ in desktops.list_all(real_ctx)]
    assert [d.state for d in rows] == [S.READY, S.READY]

    conn = libvirt.open("qemu:///system")
    for row in rows:
        # the guest booted this clone and wrote to it: its boot counter lives on the overlay
        serial = hv.serial_log(row.name).read_text()
        assert f"SHIFTDESK-READY name={row.name} boots=1" in serial
        info = subprocess.run(["qemu-img", "info", "--output=json", "-U", row.disk_path],
                              capture_output=True, text=True, check=True).stdout
        assert golden.disk_path in info, "overlay is not a linked clone of the golden image"

        frame = grab_frame(str(hv.vnc_socket(row.name)))
        assert frame.width >= 640 and frame.height >= 400
        assert any(frame.pixels), "framebuffer is blank"
        assert len(set(frame.pixels)) > 1
        with Image.open(io.BytesIO(hv.screenshot(row.name))) as shot:  # the console's view, via libvirt
            assert shot.format == "PNG" and shot.width == min(frame.width, 640)
            assert len(set(shot.convert("RGB").getdata())) > 1, "the screenshot is blank"

        xml = ET.fromstring(conn.lookupByName(row.name).XMLDesc(0))
        # TCG unless the real probe saw a kernel boot under KVM (on nested hosts it never does)
        assert xml.get("type") == hv.domain_type and hv.domain_type in ("qemu", "kvm")
        for absent in ("devices/sound", "devices/redirdev", "devices/channel", "devices/filesystem",
                       "devices/hostdev", "devices/interface"):
            assert xml.find(absent) is None, f"{absent} must not exist"
        graphics = xml.find("devices/graphics")
        assert graphics is not None and graphics.get("socket") == str(hv.vnc_socket(row.name))
        assert graphics.get("port") in (None, "-1", "0") and graphics.find("listen[@type='address']") is None
        assert xml.find("devices/controller[@type='usb']").get("model") == "none"

    pools.delete(real_ctx, "agents", actor="test")
    assert rec.run_until_converged(timeout=180)
    rec.close()
    assert tagged_domains(real_settings.instance) == []
    assert hv.list_overlays() == set()
    pool = conn.storagePoolLookupByName(real_settings.storage_pool)
    pool.refresh(0)
    assert pool.listVolumes() == []
    assert pools.list_all(real_ctx) == []


def test_libvirt_answers_fast_enough_for_the_start_selftest(real_ctx, real_settings):
    from controlplane.services import selftest

    check = selftest.run(real_ctx.hypervisor, real_settings.libvirt.selftest_max_ms)
    assert check.ok, check.explain()


def test_the_host_reports_its_cpus_memory_and_desktop_storage(real_ctx, real_settings):
    """libvirt's own view of this machine, as the console's hosts tab and `host ls` show it."""
    import os
    from pathlib import Path

    from controlplane.services import hosts

    (view,) = hosts.views(real_ctx)
    assert (view.state, view.reason, view.uri) == ("active", None, "qemu:///system")
    cap = view.capacity
    assert cap is not None and cap.vcpus == os.cpu_count()
    # libvirt counts its NUMA nodes' memory, which on this VM is less than /proc/meminfo's MemTotal
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*/meminfo"))
    mem_kib = sum(int(line.split()[-2]) for node in nodes for line in node.read_text().splitlines()
                  if "MemTotal:" in line)
    assert abs(cap.memory_mib - mem_kib // 1024) <= 1
    fs = os.statvfs(real_ctx.hypervisor.overlay_dir)  # the storage pool is a directory there
    assert cap.disk_bytes == fs.f_blocks * fs.f_frsize
    assert abs(cap.disk_free_bytes - fs.f_bfree * fs.f_frsize) < 0.01 * cap.disk_bytes  # libvirt: free blocks
