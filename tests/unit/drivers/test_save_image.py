"""The save-file trick behind instant clones, on synthetic files shaped like libvirt's."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from controlplane.drivers.libvirt import save_image as si
from controlplane.drivers.libvirt.domxml import read_tag
from controlplane.errors import PermanentError

TEMPLATE_XML = """<domain type='qemu'>
  <name>sd-main.tpl-i1-m256-c1</name>
  <uuid>11111111-1111-1111-1111-111111111111</uuid>
  <genid>22222222-2222-2222-2222-222222222222</genid>
  <metadata><shiftdesk:desktop xmlns:shiftdesk="https://shiftdesk.dev/xmlns/desktop/1">
    <shiftdesk:instance>main</shiftdesk:instance><shiftdesk:pool></shiftdesk:pool>
    <shiftdesk:desktop-id>0</shiftdesk:desktop-id><shiftdesk:generation>1</shiftdesk:generation>
    <shiftdesk:role>template</shiftdesk:role><shiftdesk:template>i1-m256-c1</shiftdesk:template>
    <shiftdesk:readiness>channel</shiftdesk:readiness><shiftdesk:created>1700000000</shiftdesk:created>
  </shiftdesk:desktop></metadata>
  <os><type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <cmdline>root=/dev/vda quiet shiftdesk.name=sd-main.tpl-i1-m256-c1</cmdline></os>
  <devices>
    <disk type='volume' device='disk'><driver name='qemu' type='qcow2'/>
      <source pool='shiftdesk-main' volume='sd-main.tpl-i1-m256-c1.qcow2' index='1'/>
      <backingStore type='file' index='2'><format type='qcow2'/><source file='/img/disk.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/><address type='pci' domain='0x0000' bus='0x00' slot='0x04' function='0x0'/>
    </disk>
    <serial type='file'><source path='/run/sd/sd-main.tpl-i1-m256-c1.serial'/><target port='0'/></serial>
    <console type='file'><source path='/run/sd/sd-main.tpl-i1-m256-c1.serial'/><target type='serial'/></console>
    <channel type='unix'><source mode='bind' path='/run/sd/sd-main.tpl-i1-m256-c1.chan'/>
      <target type='virtio' name='org.shiftdesk.agent.0' state='connected'/></channel>
    <graphics type='vnc' socket='/run/sd/sd-main.tpl-i1-m256-c1.vnc'>
      <listen type='socket' socket='/run/sd/sd-main.tpl-i1-m256-c1.vnc'/></graphics>
  </devices>
</domain>"""
COOKIE = b"<qemuDomainSaveCookie><cpu mode='custom'/></qemuDomainSaveCookie>"
STREAM = bytes(range(256)) * 4096  # 1 MiB standing in for QEMU's migration stream


def template_file(tmp_path: Path, *, magic=si.MAGIC) -> Path:
    data = TEMPLATE_XML.encode() + b"\0"
    cookie_at = len(data)
    data += COOKIE + b"\0"
    data += b"\0" * (-len(data) % 4096)
    path = tmp_path / "t.save"
    path.write_bytes(si.HEADER.pack(magic, 2, len(data), 1, 0, cookie_at) + data + STREAM)
    return path


NEW = si.CloneNames(name="sd-main-sales-0a1b2c", uuid="33333333-3333-3333-3333-333333333333",
                    genid="44444444-4444-4444-4444-444444444444", pool="sales", desktop_id=7, generation=2,
                    template="i1-m256-c1", created=1800000000, volume="sd-main-sales-0a1b2c.qcow2",
                    serial=Path("/run/sd/sd-main-sales-0a1b2c.serial"), vnc=Path("/run/sd/sd-main-sales-0a1b2c.vnc"),
                    channel=Path("/run/sd/sd-main-sales-0a1b2c.chan"))


def test_header_xml_and_cookie_are_read_back(tmp_path):
    head = si.read_header(template_file(tmp_path))
    assert head.xml == TEMPLATE_XML and head.cookie == COOKIE + b"\0" and head.was_running == 1
    assert head.stream_offset % 4096 == si.HEADER.size % 4096


def read_fifo(path: Path, limit: int | None = None) -> bytes:
    """What libvirt reads from a clone's feed: everything, or its first LIMIT bytes."""
    fd = os.open(path, os.O_RDONLY)
    chunks: list[bytes] = []
    try:
        while limit is None or sum(map(len, chunks)) < limit:
            chunk = os.read(fd, 65536 if limit is None else limit - sum(map(len, chunks)))
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def test_the_clone_feed_serves_the_new_xml_the_same_cookie_and_the_same_stream(tmp_path):
    src = template_file(tmp_path)
    xml = si.rewrite_for_clone(si.read_header(src).xml, NEW)
    with si.CloneFeed(src, tmp_path / "clone.restore", xml) as feed:
        assert stat.S_ISFIFO(feed.path.stat().st_mode) and feed.path.stat().st_mode & 0o777 == 0o600
        served = read_fifo(feed.path)
    assert not feed.path.exists() and feed.served == 1
    out = tmp_path / "as-read"
    out.write_bytes(served)
    head = si.read_header(out)
    assert head.xml == xml and head.cookie == COOKIE + b"\0" and head.version == 2
    assert served[head.stream_offset:] == STREAM


def test_a_reader_that_looks_at_the_header_only_is_followed_by_one_served_from_the_start(tmp_path):
    """Later libvirts open the save file twice: once for its header, once to restore."""
    src = template_file(tmp_path)
    xml = si.rewrite_for_clone(si.read_header(src).xml, NEW)
    with si.CloneFeed(src, tmp_path / "clone.restore", xml) as feed:
        first = read_fifo(feed.path, limit=si.HEADER.size)
        whole = read_fifo(feed.path)
    assert whole.startswith(first) and whole.endswith(STREAM)


def test_a_feed_nobody_reads_ends_with_its_block(tmp_path):
    """A restore that fails before libvirt opens the file leaves no writer waiting, no fifo."""
    src = template_file(tmp_path)
    started = time.monotonic()
    with si.CloneFeed(src, tmp_path / "clone.restore", TEMPLATE_XML) as feed:
        pass
    assert time.monotonic() - started < 5 and not feed._thread.is_alive() and not feed.path.exists()


def test_the_rewrite_renames_everything_that_makes_a_domain_itself_and_nothing_else(tmp_path):
    xml = si.rewrite_for_clone(TEMPLATE_XML, NEW)
    assert "tpl-" not in xml.replace("<shiftdesk:template>i1-m256-c1", "")  # no trace of the template's name
    for value in ("33333333-3333", "44444444-4444", "sd-main-sales-0a1b2c.qcow2", "0a1b2c.serial", "0a1b2c.chan",
                  "0a1b2c.vnc", "shiftdesk.name=sd-main-sales-0a1b2c"):
        assert value in xml
    assert "backingStore" not in xml  # libvirt finds the chain of the new overlay itself
    assert "slot=\"0x04\"" in xml and "pc-i440fx-7.2" in xml  # the machine the state was saved from
    tag = read_tag(xml)
    assert tag is not None and (tag.role, tag.pool, tag.desktop_id, tag.generation) == ("desktop", "sales", 7, 2)
    assert tag.template == "i1-m256-c1"


def test_a_template_with_a_channel_needs_a_clone_channel():
    with pytest.raises(PermanentError, match="host channel"):
        si.rewrite_for_clone(TEMPLATE_XML, si.CloneNames(**{**NEW.__dict__, "channel": None}))


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"NotAVirtSaveFile" + b[16:], "not a libvirt"),
    (lambda b: si.PARTIAL + b[16:], "never finished"),
    (lambda b: b[:50], "truncated header"),
    (lambda b: b[:200], "truncated data"),
])
def test_a_damaged_template_file_is_refused(tmp_path, damage, message):
    path = template_file(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PermanentError, match=message):
        si.read_header(path)
    out = tmp_path / "clone.restore"
    with pytest.raises(PermanentError):
        si.CloneFeed(path, out, TEMPLATE_XML)
    assert not out.exists()
