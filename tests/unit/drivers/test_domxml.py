"""Golden-file tests of the domain XML we emit, and a round trip through libvirt's test driver.

Regenerate the golden files with SHIFTDESK_REGEN_GOLDEN=1 after an intended change, and read
the diff before committing it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import libvirt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.domain import naming
from controlplane.domain.app_policy import AppPolicy, sign
from controlplane.domain.console import LocalConsole, RemoteConsole, Stream
from controlplane.domain.network import DesktopNetwork
from controlplane.domain.ports import BootImage, DesktopSpec, Readiness, TemplateKey
from controlplane.drivers.libvirt import linked_clone
from controlplane.drivers.libvirt.domxml import Domain, Tag, read_tag
from controlplane.drivers.libvirt.driver import LibvirtHypervisor
from controlplane.drivers.libvirt.guest_link import GuestLinks
from controlplane.errors import PermanentError

DATA = Path(__file__).resolve().parents[2] / "data" / "domxml"

CASES = {
    "desktop-basic": DesktopSpec(
        name="sd-main-sales-0a1b2c", pool="sales", desktop_id=7,
        image=BootImage(disk=Path("/var/lib/shiftdesk/images/busybox-desktop/abc/disk.qcow2"),
                        kernel=Path("/var/lib/shiftdesk/images/busybox-desktop/abc/vmlinuz"),
                        initrd=Path("/var/lib/shiftdesk/images/busybox-desktop/abc/initrd.img"),
                        cmdline="root=/dev/vda rw console=tty0 console=ttyS0 quiet")),
    "desktop-big-rebuilt": DesktopSpec(
        name="sd-main-support-ffffff", pool="support", desktop_id=12, memory_mib=2048, vcpus=2, generation=3,
        image=BootImage(disk=Path("/img/disk.qcow2"), kernel=Path("/img/vmlinuz"), initrd=None,
                        cmdline="root=/dev/vda <script>&amp;")),
    "desktop-joining": DesktopSpec(
        name="sd-main-sales-0a1b2d", pool="sales", desktop_id=8, join_secret="s3cret-never-in-xml",
        image=BootImage(disk=Path("/img/disk.qcow2"), kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd.img"),
                        cmdline="root=/dev/vda")),
    "desktop-agent": DesktopSpec(
        name="sd-main-sales-0a1b2e", pool="sales", desktop_id=9, memory_mib=1024, vcpus=2,
        join_secret="s3cret-over-the-channel-only",
        image=BootImage(disk=Path("/img/agent/disk.qcow2"), kernel=Path("/img/agent/vmlinuz"),
                        initrd=Path("/img/agent/initrd.img"), cmdline="root=/dev/vda ro quiet",
                        readiness=Readiness.CHANNEL)),
    "desktop-private-memory": DesktopSpec(
        name="sd-main-bank-0a1b2f", pool="bank", desktop_id=10, share_memory=False,
        image=BootImage(disk=Path("/img/disk.qcow2"), kernel=Path("/img/vmlinuz"), initrd=None,
                        cmdline="root=/dev/vda")),
    "desktop-networked": DesktopSpec(
        name="sd-main-sales-0a1b30", pool="sales", desktop_id=11,
        nic=DesktopNetwork.of("main", IPv4Network("10.213.0.0/16")).nic("sd-main-sales-0a1b30",
                                                                       IPv4Address("10.213.1.12")),
        image=BootImage(disk=Path("/img/disk.qcow2"), kernel=Path("/img/vmlinuz"), initrd=None,
                        cmdline="root=/dev/vda")),
}


def hypervisor(uri: str = "test:///default") -> LibvirtHypervisor:
    return LibvirtHypervisor(uri=uri, instance="main", storage_pool="default-pool",
                             overlay_dir=Path("/default-pool"), run_dir=Path("/tmp/shiftdesk-unit-run"),
                             readiness="running")


@pytest.mark.parametrize("case", sorted(CASES))
def test_domain_xml_matches_golden_file(case):
    xml = hypervisor().domain_model(CASES[case]).to_xml()
    golden = DATA / f"{case}-out.xml"
    if os.environ.get("SHIFTDESK_REGEN_GOLDEN") == "1":
        golden.write_text(xml)
    assert xml == golden.read_text()


@pytest.mark.parametrize("case", sorted(CASES))
def test_parse_round_trips(case):
    model = hypervisor().domain_model(CASES[case])
    again = Domain.parse(model.to_xml())
    assert again == model
    assert again.to_xml() == model.to_xml()


def test_user_text_is_escaped_not_interpreted():
    xml = hypervisor().domain_model(CASES["desktop-big-rebuilt"]).to_xml()
    assert "<script>" not in xml and "&lt;script&gt;&amp;amp;" in xml


def test_no_forbidden_devices():
    xml = hypervisor().domain_model(CASES["desktop-basic"]).to_xml()
    for forbidden in ("<sound", "<redirdev", "<channel", "<filesystem", "<hostdev", "spicevmc", "<interface"):
        assert forbidden not in xml
    assert 'model="none"' in xml and "socket=" in xml and "listen type=\"socket\"" in xml


def test_the_agent_desktop_has_only_our_channel_and_no_secret_in_its_definition():
    xml = hypervisor().domain_model(CASES["desktop-agent"]).to_xml()
    assert xml.count("<channel") == 1
    assert 'type="unix"' in xml and 'name="org.shiftdesk.agent.0"' in xml
    assert "/tmp/shiftdesk-unit-run/sd-main-sales-0a1b2e.chan" in xml
    assert "s3cret" not in xml and "fwcfg" not in xml  # the secret travels with its identity instead
    for forbidden in ("spicevmc", "org.qemu.guest_agent", "<sound", "<redirdev", "<filesystem", "<interface"):
        assert forbidden not in xml
    assert '<tb-cache unit="MiB">128</tb-cache>' in xml


def test_a_networked_desktop_has_one_virtio_nic_on_the_bridge_without_a_boot_rom():
    xml = hypervisor().domain_model(CASES["desktop-networked"]).to_xml()
    assert xml.count("<interface") == 1
    for wanted in ('<interface type="bridge">', '<mac address="52:54:00:d5:01:0c"', '<source bridge="sd-main"',
                   '<model type="virtio"', '<rom enabled="no"'):
        assert wanted in xml
    tap = CASES["desktop-networked"].nic.tap  # type: ignore[union-attr]
    assert f'<target dev="{tap}"' in xml and len(tap) <= 15


def test_test_driver_accepts_define_start_destroy():
    hv = hypervisor()
    spec = CASES["desktop-basic"]
    conn = libvirt.open("test:///default")
    dom = conn.defineXML(hv.domain_model(spec).to_xml())
    dom.create()
    assert dom.isActive()
    tag = read_tag(dom.XMLDesc(0))
    assert tag is not None and (tag.instance, tag.pool, tag.desktop_id) == ("main", "sales", 7)
    dom.destroy()
    dom.undefine()


def two_installations() -> tuple[LibvirtHypervisor, LibvirtHypervisor, DesktopSpec, DesktopSpec]:
    """Ours ("main") and another installation ("other") on one host, a desktop defined by each."""
    hv = hypervisor()
    other = LibvirtHypervisor(uri="test:///default", instance="other", storage_pool="default-pool",
                              overlay_dir=Path("/default-pool"), run_dir=Path("/tmp/shiftdesk-unit-run"),
                              readiness="running")
    mine = CASES["desktop-basic"]
    theirs = DesktopSpec(name="sd-other-sales-000001", pool="sales", desktop_id=1, image=mine.image)
    hv.define(mine)
    other.define(theirs)
    return hv, other, mine, theirs


def test_driver_lists_only_its_own_tagged_domains():
    hv, other, mine, theirs = two_installations()
    hv.start(mine.name)
    try:
        seen = hv.list_desktops()
        assert set(seen) == {mine.name} and seen[mine.name].running and seen[mine.name].ready
        assert "test" not in seen  # the test driver's own (untagged) domain is never ours
    finally:
        hv.undefine(mine.name)
        other.undefine(theirs.name)
    assert mine.name not in hv.list_desktops()
    hv.undefine(mine.name)  # undefining twice is success
    hv.destroy(mine.name)


def test_one_observation_reads_each_of_our_domains_once_and_no_one_elses(monkeypatch):
    """A pass over a host with thousands of desktops reads each one's metadata once: not once
    for desktops and again for templates, and not at all for other installations' domains."""
    hv, other, mine, theirs = two_installations()
    read: list[str] = []
    tag = LibvirtHypervisor._tag

    def counted(self, dom):
        read.append(dom.name())
        return tag(self, dom)

    monkeypatch.setattr(LibvirtHypervisor, "_tag", counted)
    try:
        seen = hv.observe()
        assert set(seen.desktops) == {mine.name} and not seen.templates
        assert read == [mine.name]
        assert seen.capacity.vcpus > 0
    finally:
        hv.undefine(mine.name)
        other.undefine(theirs.name)


def test_a_running_domain_has_its_tag_read_once_per_boot_and_a_stopped_one_every_time(monkeypatch):
    """Every pass observes every domain: a running one's tag (an RPC to its host) is read once
    per boot, found again after a restart, and a stopped one's, which can change, every time."""
    hv, other, mine, theirs = two_installations()
    read: list[str] = []
    tag = LibvirtHypervisor._tag
    monkeypatch.setattr(LibvirtHypervisor, "_tag", lambda self, dom: read.append(dom.name()) or tag(self, dom))
    try:
        hv.observe(), hv.observe()
        assert read == [mine.name] * 2  # stopped: read each time
        hv.start(mine.name)
        read.clear()
        assert hv.observe().desktops[mine.name].running and hv.observe().desktops[mine.name].running
        assert read == [mine.name]
        hv.destroy(mine.name)
        hv.start(mine.name)  # a new boot, a new ID
        read.clear()
        hv.observe(), hv.observe()
        assert read == [mine.name]
    finally:
        hv.undefine(mine.name)
        other.undefine(theirs.name)


def test_a_serial_desktop_is_ready_for_the_rest_of_the_boot_its_line_said_so(tmp_path):
    """The serial log is read until it says ready, then not again in that boot; the next boot
    must say it again."""
    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path, run_dir=tmp_path, readiness="serial")
    spec = CASES["desktop-basic"]
    hv.define(spec)
    try:
        hv.start(spec.name)
        assert not hv.observe().desktops[spec.name].ready
        hv.serial_log(spec.name).write_text(f"boot\nSHIFTDESK-READY name={spec.name}\n")
        assert hv.observe().desktops[spec.name].ready
        hv.serial_log(spec.name).write_text("rotated away\n")
        assert hv.observe().desktops[spec.name].ready  # this boot said so
        hv.destroy(spec.name)
        hv.start(spec.name)
        assert not hv.observe().desktops[spec.name].ready
    finally:
        hv.undefine(spec.name)


def test_a_retired_template_keeps_its_disk_until_no_desktop_disk_is_backed_by_it(tmp_path):
    """Its memory goes (nothing restores from it again), its disk stays while a clone's overlay
    is backed by it, and the host says so; removing it then takes the disk and the mark."""
    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path / "pool", run_dir=tmp_path / "run", readiness="running")
    key, clone = TemplateKey(7, 256, 1), "sd-main-sales-0a0a0a"
    disk_name = naming.volume_name(hv.template_name(key))
    disk = linked_clone.create_overlay(hv._pool(), disk_name, Path("/img/disk.qcow2"), 1 << 30)
    linked_clone.create_overlay(hv._pool(), naming.volume_name(clone), disk, 1 << 30)
    hv.templates_dir.mkdir(parents=True)
    hv.template_file(key).write_bytes(b"its memory")
    try:
        hv.retire_template(key)
        seen = hv.observe().templates[key]
        assert (seen.retired, seen.backs_desktops, seen.saved) == (True, True, False)
        assert not hv.template_file(key).exists() and hv.template(key).retired
        hv.retire_template(key)  # again: nothing changes
        assert hv.list_templates()[key] == seen
        hv.delete_overlay(clone)
        assert not hv.list_templates()[key].backs_desktops
        hv.remove_template(key)
        assert hv.template(key) is None and key not in hv.observe().templates
        assert disk_name not in hv._pool().listVolumes()
    finally:
        hv.delete_overlay(clone)
        linked_clone.delete_overlay(hv._pool(), disk_name)


def test_redefine_keeps_uuid_and_generation_updates():
    hv = hypervisor()
    spec = CASES["desktop-basic"]
    hv.define(spec)
    conn = libvirt.open("test:///default")
    uuid = conn.lookupByName(spec.name).UUIDString()
    hv.define(DesktopSpec(**{**spec.__dict__, "generation": 2}))
    assert conn.lookupByName(spec.name).UUIDString() == uuid
    assert hv.list_desktops()[spec.name].generation == 2
    hv.undefine(spec.name)


def test_join_secret_goes_to_a_root_only_file_never_into_xml(tmp_path):
    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path, run_dir=tmp_path, readiness="running")
    spec = CASES["desktop-joining"]
    hv.define(spec)
    try:
        xml = libvirt.open("test:///default").lookupByName(spec.name).XMLDesc(0)
        assert "s3cret" not in xml and "opt/org.shiftdesk/join" in xml
        secret_file = hv.join_file(spec.name)
        assert secret_file.read_text() == "s3cret-never-in-xml"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        hv.discard_join_secret(spec.name)
        assert not secret_file.exists()
    finally:
        hv.undefine(spec.name)


def test_a_discarded_join_secret_leaves_a_definition_that_can_start_again(tmp_path):
    """QEMU refuses to start a domain whose fw_cfg file is gone: once the guest has its secret, the
    definition must stop pointing at the file, and a definition left pointing at a missing file (an
    older one, or a crash in between) is healed at start."""
    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path, run_dir=tmp_path, readiness="running")
    spec = CASES["desktop-joining"]
    conn = libvirt.open("test:///default")
    hv.define(spec)
    try:
        hv.discard_join_secret(spec.name)
        xml = conn.lookupByName(spec.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert "opt/org.shiftdesk/join" not in xml and str(hv.join_file(spec.name)) not in xml
        assert Domain.parse(xml).fw_cfg == [] and read_tag(xml).desktop_id == spec.desktop_id

        hv.define(spec)  # a definition from before this fix: the file is gone, the reference stays
        hv.join_file(spec.name).unlink()
        hv.start(spec.name)
        assert conn.lookupByName(spec.name).isActive()
        assert "opt/org.shiftdesk/join" not in conn.lookupByName(spec.name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    finally:
        hv.undefine(spec.name)


@pytest.mark.parametrize("uri, remote", [
    ("qemu:///system", None),
    ("qemu+unix:///system", None),
    ("test:///default", None),
    ("qemu+tls://10.254.2.2/system?pkipath=/x", "10.254.2.2"),
    ("qemu+ssh://root@host-b.example/system", "host-b.example"),
    ("qemu+tls://[fd00::2]:16514/system", "fd00::2"),
])
def test_the_gateway_opens_a_local_socket_only_on_this_machine_and_else_the_hosts_relay(uri, remote):
    hv = hypervisor(uri)
    hv.console_port = 16600
    name = CASES["desktop-basic"].name
    if remote is None:
        assert hv.console(name) == LocalConsole(Path("/tmp/shiftdesk-unit-run") / f"{name}.vnc")
    else:
        assert hv.console(name) == RemoteConsole(remote, 16600, name)
    with pytest.raises(PermanentError):
        hv.console("../../etc/shadow")


def test_the_relay_finds_a_running_desktops_sockets_in_its_definition_and_nothing_else():
    hv, other, mine, theirs = two_installations()
    agent = CASES["desktop-agent"]
    hv.define(agent)
    try:
        with pytest.raises(PermanentError, match="not a running desktop"):
            hv.running_socket(mine.name, Stream.VNC)  # defined, not running
        hv.start(mine.name)
        hv.start(agent.name)
        other.start(theirs.name)
        run = Path("/tmp/shiftdesk-unit-run")
        assert hv.running_socket(mine.name, Stream.VNC) == run / f"{mine.name}.vnc"
        assert hv.running_socket(agent.name, Stream.CHANNEL) == run / f"{agent.name}.chan"
        with pytest.raises(PermanentError, match="no host channel"):
            hv.running_socket(mine.name, Stream.CHANNEL)  # a busybox desktop has none
        with pytest.raises(PermanentError):
            hv.running_socket(theirs.name, Stream.VNC)  # another installation's desktop
        with pytest.raises(PermanentError):
            hv.running_socket("test", Stream.VNC)  # the test driver's own domain
        untagged = hv.conn.defineXML(  # named like ours, but nobody's desktop
            "<domain type='test'><name>sd-main-sales-0a1b99</name><memory>65536</memory>"
            "<os><type>hvm</type></os><devices><graphics type='vnc' socket='/run/x.vnc'/></devices></domain>")
        untagged.create()
        with pytest.raises(PermanentError, match="not a running desktop"):
            hv.running_socket("sd-main-sales-0a1b99", Stream.VNC)
        template = hv.template_name(TemplateKey(1, 1024, 2))
        with pytest.raises(PermanentError, match="not a running desktop"):
            hv.running_socket(template, Stream.CHANNEL)  # none is running
        model = hv.domain_model(replace(agent, name=template, pool="", desktop_id=0))
        model.tag = Tag(instance="main", pool="", desktop_id=0, role="template", template="i1-m1024-c2",
                        readiness="channel")
        hv.conn.defineXML(model.to_xml()).create()
        # a template on another host says it is ready over its host channel, through the relay
        assert hv.running_socket(template, Stream.CHANNEL) == run / f"{template}.chan"
        with pytest.raises(PermanentError, match="is not a desktop"):
            hv.running_socket(template, Stream.VNC)  # a template has no console for anyone
    finally:
        hv.undefine(mine.name)
        hv.undefine(agent.name)
        hv.undefine("sd-main-sales-0a1b99")
        hv.undefine(hv.template_name(TemplateKey(1, 1024, 2)))
        other.undefine(theirs.name)


def test_an_app_allowlist_goes_only_over_a_link_the_identity_opened():
    """Every pass sends every desktop its list; a booting one has no confirmed guest yet."""
    dialled = []

    def dial(name: str, path: Path):
        dialled.append(name)
        raise OSError("nothing listens there")

    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=Path("/default-pool"), run_dir=Path("/tmp/shiftdesk-unit-run"),
                           links=GuestLinks(dial=dial))
    name = "sd-main-sales-000001"
    assert not hv.deliver_apps(name, sign(Ed25519PrivateKey.generate(), AppPolicy.of(name, 1, {"firefox-esr"})))
    assert dialled == []


def test_a_retired_templates_clones_are_read_once_then_looked_for_by_name(tmp_path, monkeypatch):
    """Whether a retired template still backs a clone costs a call per volume on a real host: it
    is asked once per retirement; later passes look for those volumes in the pool's listing."""
    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path / "pool", run_dir=tmp_path / "run", readiness="running")
    key, clones = TemplateKey(8, 256, 1), ["sd-main-sales-0b0b0b", "sd-main-sales-0c0c0c"]
    disk_name = naming.volume_name(hv.template_name(key))
    disk = linked_clone.create_overlay(hv._pool(), disk_name, Path("/img/disk.qcow2"), 1 << 30)
    for clone in clones:
        linked_clone.create_overlay(hv._pool(), naming.volume_name(clone), disk, 1 << 30)
    scans = []
    real = linked_clone.backed_by
    monkeypatch.setattr(linked_clone, "backed_by", lambda pool, path: scans.append(path) or real(pool, path))
    try:
        hv.retire_template(key)
        for _ in range(3):
            assert hv.list_templates()[key].backs_desktops
        assert len(scans) == 1
        hv.delete_overlay(clones[0])
        assert hv.list_templates()[key].backs_desktops  # the other clone is still backed by it
        hv.delete_overlay(clones[1])
        assert not hv.list_templates()[key].backs_desktops and len(scans) == 1
        hv.remove_template(key)
        disk = linked_clone.create_overlay(hv._pool(), disk_name, Path("/img/disk.qcow2"), 1 << 30)  # built anew
        linked_clone.create_overlay(hv._pool(), naming.volume_name(clones[0]), disk, 1 << 30)
        hv.retire_template(key)  # retired again, later: asked afresh
        assert hv.list_templates()[key].backs_desktops and len(scans) == 2
    finally:
        for clone in clones:
            hv.delete_overlay(clone)
        linked_clone.delete_overlay(hv._pool(), disk_name)
        hv.remove_template(key)


def _defined_template(tmp_path: Path, n: int) -> tuple[LibvirtHypervisor, TemplateKey, str]:
    """A test-driver hypervisor with template N's domain defined (tagged as a template) and an
    empty templates directory; also its domain XML, to define it again."""
    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path / "pool", run_dir=tmp_path / "run", readiness="running")
    key = TemplateKey(n, 256, 1)
    model = hv.domain_model(replace(CASES["desktop-basic"], name=hv.template_name(key), pool="", desktop_id=0),
                            genid=f"00000000-0000-4000-8000-{n:012d}")
    model.tag = Tag(instance="main", pool="", desktop_id=0, role="template", template=key.slug, readiness="serial")
    xml = model.to_xml()
    hv.conn.defineXML(xml)
    hv.templates_dir.mkdir(parents=True)
    return hv, key, xml


def test_a_template_undefined_while_it_is_observed_is_seen_by_its_save_file(tmp_path, monkeypatch):
    """A template is undefined right after its save: another thread (the bench's, the API's) or
    replica observing at that moment listed its domain and then found it gone. That is the
    template as its save file says, not an error out of libvirt."""
    hv, key, xml = _defined_template(tmp_path, 9)
    hv.template_file(key).write_bytes(b"not a save file")  # a partial one: not saved
    listed = hv._list_ours

    def listed_then_saved():  # the reconciler saves and undefines it right after the listing
        found = listed()
        hv.conn.lookupByName(hv.template_name(key)).undefine()
        return found

    monkeypatch.setattr(hv, "_list_ours", listed_then_saved)
    assert key not in hv.list_templates()
    hv.conn.defineXML(xml)
    looked_up = hv._lookup

    def looked_up_then_saved(name):  # the same, between a lookup and the calls on what it found
        dom = looked_up(name)
        if dom is not None:
            dom.undefine()
        return dom

    monkeypatch.setattr(hv, "_lookup", looked_up_then_saved)
    assert hv.template(key) is None
    hv.conn.defineXML(xml)
    assert not hv.is_ready(hv.template_name(key))


def test_a_desktop_undefined_between_its_lookup_and_its_use_is_an_answer_not_a_libvirt_error(monkeypatch):
    """Another replica or an admin may remove a desktop at any moment: destroying it is then done,
    a screenshot or a start of it says it is not there, and no raw libvirt error escapes."""
    hv = hypervisor()
    spec = CASES["desktop-basic"]
    looked_up = hv._lookup

    def looked_up_then_removed(name):
        dom = looked_up(name)
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        return dom

    monkeypatch.setattr(hv, "_lookup", looked_up_then_removed)
    for act in (hv.destroy, hv.screenshot, hv.start):
        hv.conn.defineXML(hv.domain_model(spec).to_xml())
        try:
            act(spec.name)
        except PermanentError as err:
            assert act != hv.destroy and spec.name in str(err)


def test_another_hosts_domain_type_is_probed_there_and_only_for_a_kernel_in_its_image_store(tmp_path):
    """A control plane without KVM may drive hosts that have it: "auto" asks the host's agent,
    which probes on its own machine, and only a kernel inside its DATA_DIR."""
    asked: list[Path] = []

    class Agent:
        def domain_type(self, kernel: Path) -> str:
            asked.append(kernel)
            return "kvm"

    hv = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                           overlay_dir=tmp_path / "pool", run_dir=tmp_path / "run", domain_type="auto",
                           data_dir=tmp_path)
    hv.remote_address, hv.files = "10.254.2.2", Agent()  # as for qemu+tls://10.254.2.2/system
    kernel = tmp_path / "images" / "agent-desktop" / "3" / "vmlinuz"
    assert hv.resolved_domain_type(kernel) == "kvm" and hv.resolved_domain_type(kernel) == "kvm"
    assert asked == [kernel]  # once: the answer is kept

    agent_side = LibvirtHypervisor(uri="test:///default", instance="main", storage_pool="default-pool",
                                   overlay_dir=tmp_path / "pool", run_dir=tmp_path / "run", domain_type="qemu",
                                   data_dir=tmp_path / "data")
    assert agent_side.probe_domain_type(tmp_path / "data" / "images" / "vmlinuz") == "qemu"
    with pytest.raises(PermanentError, match="not in this host's image store"):
        agent_side.probe_domain_type(Path("/etc/passwd"))


def test_a_pass_looks_at_the_hosts_template_files_once_and_marks_a_running_template_saved(tmp_path):
    """For another host each look is a connection to its agent: one per pass, not one per template."""
    from tests.unit.drivers.test_save_image import template_file

    hv, key, _ = _defined_template(tmp_path, 8)
    template_file(tmp_path).rename(hv.template_file(key))  # saved, its domain not yet undefined
    looks: list[str] = []
    for method in ("template_files", "template_state"):
        real = getattr(hv.files, method)
        setattr(hv.files, method, lambda *a, _m=method, _real=real: looks.append(_m) or _real(*a))
    try:
        found = hv.list_templates()
        assert found[key].defined and found[key].saved
        assert looks == ["template_files"]
    finally:
        hv.conn.lookupByName(hv.template_name(key)).undefine()
