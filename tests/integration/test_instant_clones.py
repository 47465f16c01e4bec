"""Instant clones on real QEMU with the busybox image: a template boots once and is saved; clones
are restored from it under their own names, UUIDs, disks and sockets, and outlive each other."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from controlplane.domain.ports import BootImage, DesktopSpec, TemplateKey
from controlplane.drivers.libvirt import save_image
from controlplane.errors import PermanentError


def boot_image(golden) -> BootImage:
    return BootImage(disk=Path(golden.disk_path), kernel=Path(golden.kernel_path),
                     initrd=Path(golden.initrd_path) if golden.initrd_path else None, cmdline=golden.cmdline,
                     image_id=golden.id)


def saved_template(hv, golden) -> TemplateKey:
    key = TemplateKey(golden.id, 256, 1)
    hv.build_template(key, boot_image(golden))
    deadline = time.monotonic() + 120
    while not hv.list_templates()[key].ready:
        assert time.monotonic() < deadline, "template never became ready"
        time.sleep(0.5)
    hv.save_template(key)
    return key


def clone_spec(golden, key: TemplateKey, name: str, desktop_id: int) -> DesktopSpec:
    return DesktopSpec(name=name, pool="sales", desktop_id=desktop_id, image=boot_image(golden), template=key)


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          check=True).stdout


def test_two_clones_of_one_template_are_separate_desktops(real_ctx, golden):
    hv = real_ctx.hypervisor
    key = saved_template(hv, golden)
    observed = hv.list_templates()[key]
    assert observed.saved and not observed.defined  # nothing can boot the template's disk again
    assert hv.template(key) == observed
    template_file = hv.template_file(key)
    assert save_image.read_header(template_file).xml.count("<name>") == 1

    names = [f"sd-{real_ctx.instance}-sales-00000{i}" for i in (1, 2)]
    for i, name in enumerate(names):
        hv.restore_clone(clone_spec(golden, key, name, i + 1))
    seen = hv.list_desktops()
    assert all(seen[n].running and seen[n].ready and seen[n].cloned for n in names)
    uuids = {virsh("domuuid", n).strip() for n in names}
    assert len(uuids) == 2
    disks = [virsh("domblklist", n) for n in names]
    assert names[0] in disks[0] and names[1] in disks[1] and names[1] not in disks[0]
    assert hv.vnc_socket(names[0]).exists() and hv.vnc_socket(names[1]).exists()
    assert not list(hv.run_dir.glob("*.restore"))  # no restore fifo is left once restored

    # writes of one clone land in its own overlay only
    before = [Path(hv._pool().storageVolLookupByName(f"{n}.qcow2").path()).stat().st_size for n in names]
    hv.destroy(names[0])
    hv.undefine(names[0])
    hv.delete_overlay(names[0])
    assert hv.is_ready(names[1]) and virsh("domstate", names[1]).strip() == "running"
    assert hv.list_templates()[key].saved
    assert before[1] > 0

    # the template cannot go while a clone is backed by it: only the planner decides that; here we
    # check remove_template removes every part of it
    hv.undefine(names[1])
    hv.delete_overlay(names[1])
    hv.remove_template(key)
    assert key not in hv.list_templates()
    assert not template_file.exists()


def test_a_restore_that_fails_leaves_no_domain_and_its_retired_template_keeps_backing_a_clone(real_ctx, golden):
    """A template whose memory can no longer be restored is retired: its clone made before runs
    on, on the disk it is backed by, and the host reports that disk in use until the clone goes."""
    hv = real_ctx.hypervisor
    key = saved_template(hv, golden)
    first = clone_spec(golden, key, f"sd-{real_ctx.instance}-sales-00000b", 2)
    hv.restore_clone(first)
    spec = clone_spec(golden, key, f"sd-{real_ctx.instance}-sales-00000a", 1)
    header = save_image.read_header(hv.template_file(key))
    # a template file cut short: libvirt refuses it, and no half-clone stays defined
    broken = hv.template_file(key)
    with broken.open("r+b") as fh:
        fh.truncate(header.stream_offset + 4096)
    with pytest.raises(PermanentError):
        hv.restore_clone(spec)
    assert spec.name not in hv.list_desktops()
    assert not list(hv.run_dir.glob("*.restore"))
    hv.delete_overlay(spec.name)

    hv.retire_template(key)
    seen = hv.list_templates()[key]
    assert seen.retired and seen.backs_desktops and not seen.saved
    assert hv.is_ready(first.name) and virsh("domstate", first.name).strip() == "running"
    hv.undefine(first.name)
    hv.delete_overlay(first.name)
    assert not hv.list_templates()[key].backs_desktops
    hv.remove_template(key)
    assert key not in hv.list_templates()
