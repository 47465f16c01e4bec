"""A typed object model of the domain XML ShiftDesk emits, and its parser.

One class per element we use; attributes are fields; `to_xml()` writes elements in a fixed
order and `parse()` reads the same shape back. Text from users never reaches the XML except
through validated names, and ElementTree escapes everything it writes.

What is absent is as deliberate as what is present: no sound, no USB controller or
redirection, no spice/qemu-ga channels (no clipboard agent), no filesystem passthrough, at most
one NIC (on the host's isolated desktop bridge), and the serial line goes to a host file only
the control plane reads. The one channel a desktop may have is ShiftDesk's own host channel
(virtio-serial to a root-only Unix socket, domain/guest_channel.py), which carries no user data.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

NS = "https://shiftdesk.dev/xmlns/desktop/1"
ET.register_namespace("shiftdesk", NS)


@dataclass(frozen=True)
class Tag:
    """The ShiftDesk tag in <metadata>: which installation, pool and desktop row owns the domain.

    `role` tells desktops from instant-clone templates (which no desktop row explains and the
    desktop reconciler must never see); `template` names the template a clone was restored
    from ("" for a cold boot); `readiness` says how the guest signals ready ("serial" line or
    host "channel"); `created` is a Unix time, so a stuck template build can be timed out."""

    instance: str
    pool: str
    desktop_id: int
    generation: int = 1
    role: str = "desktop"
    template: str = ""
    readiness: str = "serial"
    created: int = 0

    def to_element(self) -> ET.Element:
        el = ET.Element(f"{{{NS}}}desktop")
        for key in ("instance", "pool"):
            ET.SubElement(el, f"{{{NS}}}{key}").text = getattr(self, key)
        ET.SubElement(el, f"{{{NS}}}desktop-id").text = str(self.desktop_id)
        ET.SubElement(el, f"{{{NS}}}generation").text = str(self.generation)
        ET.SubElement(el, f"{{{NS}}}role").text = self.role
        if self.template:
            ET.SubElement(el, f"{{{NS}}}template").text = self.template
        ET.SubElement(el, f"{{{NS}}}readiness").text = self.readiness
        if self.created:
            ET.SubElement(el, f"{{{NS}}}created").text = str(self.created)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Tag:
        """Parse with or without the namespace: virDomainGetMetadata returns the element bare."""
        values = {child.tag.rsplit("}", 1)[-1]: (child.text or "") for child in el}

        def text(key: str) -> str:
            return values.get(key, "")

        return cls(instance=text("instance"), pool=text("pool"), desktop_id=int(text("desktop-id") or 0),
                   generation=int(text("generation") or 1), role=text("role") or "desktop",
                   template=text("template"), readiness=text("readiness") or "serial",
                   created=int(text("created") or 0))


@dataclass
class OS:
    kernel: Path
    initrd: Path | None
    cmdline: str
    arch: str = "x86_64"
    machine: str = "pc"

    def to_element(self) -> ET.Element:
        el = ET.Element("os")
        ET.SubElement(el, "type", arch=self.arch, machine=self.machine).text = "hvm"
        ET.SubElement(el, "kernel").text = str(self.kernel)
        if self.initrd is not None:
            ET.SubElement(el, "initrd").text = str(self.initrd)
        ET.SubElement(el, "cmdline").text = self.cmdline
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> OS:
        typ = el.find("type")
        initrd = el.findtext("initrd")
        return cls(
            kernel=Path(el.findtext("kernel") or ""),
            initrd=Path(initrd) if initrd else None,
            cmdline=el.findtext("cmdline") or "",
            arch=typ.get("arch", "x86_64") if typ is not None else "x86_64",
            machine=typ.get("machine", "pc") if typ is not None else "pc",
        )


@dataclass
class Disk:
    """The desktop's overlay, from our storage pool (so libvirt knows the volume)."""

    pool: str
    volume: str
    target: str = "vda"

    def to_element(self) -> ET.Element:
        el = ET.Element("disk", type="volume", device="disk")
        ET.SubElement(el, "driver", name="qemu", type="qcow2", cache="none", discard="unmap")
        ET.SubElement(el, "source", pool=self.pool, volume=self.volume)
        ET.SubElement(el, "target", dev=self.target, bus="virtio")
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Disk:
        src, tgt = el.find("source"), el.find("target")
        assert src is not None and tgt is not None
        return cls(pool=src.get("pool", ""), volume=src.get("volume", ""), target=tgt.get("dev", "vda"))


@dataclass
class SerialLog:
    """Serial port 0 written to a host file: the guest's readiness line lands there."""

    path: Path

    def to_element(self) -> ET.Element:
        el = ET.Element("serial", type="file")
        ET.SubElement(el, "source", path=str(self.path), append="off")
        ET.SubElement(el, "target", port="0")
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> SerialLog:
        src = el.find("source")
        return cls(path=Path(src.get("path", "") if src is not None else ""))


@dataclass
class VncGraphics:
    """VNC on a Unix socket: only root on the host (the gateway) can reach it. No TCP listener."""

    socket: Path

    def to_element(self) -> ET.Element:
        el = ET.Element("graphics", type="vnc", socket=str(self.socket), sharePolicy="allow-exclusive")
        ET.SubElement(el, "listen", type="socket", socket=str(self.socket))
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> VncGraphics:
        return cls(socket=Path(el.get("socket", "")))


@dataclass
class HostChannel:
    """The host channel: a virtio-serial port whose host end is a Unix socket QEMU listens on
    (root-only, like the VNC socket); the control plane connects, the in-guest agent answers."""

    socket: Path
    port: str

    def to_element(self) -> ET.Element:
        el = ET.Element("channel", type="unix")
        ET.SubElement(el, "source", mode="bind", path=str(self.socket))
        ET.SubElement(el, "target", type="virtio", name=self.port)
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> HostChannel:
        src, tgt = el.find("source"), el.find("target")
        return cls(socket=Path(src.get("path", "") if src is not None else ""),
                   port=tgt.get("name", "") if tgt is not None else "")


@dataclass
class Interface:
    """The desktop's one NIC: a virtio port on the host's desktop bridge, with the MAC and host
    port name the control plane chose (the host's firewall checks frames against both). No boot
    ROM: desktops boot their kernel directly, and a ROM is one more thing for a guest to poke."""

    bridge: str
    mac: str
    tap: str

    def to_element(self) -> ET.Element:
        el = ET.Element("interface", type="bridge")
        ET.SubElement(el, "mac", address=self.mac)
        ET.SubElement(el, "source", bridge=self.bridge)
        ET.SubElement(el, "target", dev=self.tap)
        ET.SubElement(el, "model", type="virtio")
        ET.SubElement(el, "rom", enabled="no")
        return el

    def to_xml(self) -> str:
        return ET.tostring(self.to_element(), encoding="unicode")

    @classmethod
    def from_element(cls, el: ET.Element) -> Interface:
        mac, src, tgt = el.find("mac"), el.find("source"), el.find("target")
        return cls(bridge=src.get("bridge", "") if src is not None else "",
                   mac=mac.get("address", "") if mac is not None else "",
                   tap=tgt.get("dev", "") if tgt is not None else "")


@dataclass
class FwCfgFile:
    """A fw_cfg blob the guest reads from /sys/firmware/qemu_fw_cfg/by_name/<name>/raw."""

    name: str
    file: Path


@dataclass
class Devices:
    disk: Disk
    serial: SerialLog
    graphics: VncGraphics
    video_model: str = "vga"
    channel: HostChannel | None = None
    interface: Interface | None = None

    def to_element(self, emulator: str | None) -> ET.Element:
        el = ET.Element("devices")
        if emulator:
            ET.SubElement(el, "emulator").text = emulator
        el.append(self.disk.to_element())
        ET.SubElement(el, "controller", type="usb", model="none")
        el.append(self.serial.to_element())
        if self.channel is not None:
            el.append(self.channel.to_element())
        if self.interface is not None:
            el.append(self.interface.to_element())
        ET.SubElement(el, "input", type="keyboard", bus="ps2")
        ET.SubElement(el, "input", type="mouse", bus="ps2")
        # absolute pointer: the browser sends absolute positions, a relative mouse drifts behind them
        ET.SubElement(el, "input", type="tablet", bus="virtio")
        el.append(self.graphics.to_element())
        video = ET.SubElement(el, "video")
        ET.SubElement(video, "model", type=self.video_model)
        ET.SubElement(el, "memballoon", model="none")
        return el

    @classmethod
    def from_element(cls, el: ET.Element) -> Devices:
        def one(path: str) -> ET.Element:
            found = el.find(path)
            if found is None:
                raise ValueError(f"domain XML: missing <{path}>")
            return found

        model = el.find("video/model")
        channel = el.find("channel[@type='unix']")
        nic = el.find("interface[@type='bridge']")
        return cls(
            disk=Disk.from_element(one("disk")),
            serial=SerialLog.from_element(one("serial")),
            graphics=VncGraphics.from_element(one("graphics")),
            video_model=model.get("type", "vga") if model is not None else "vga",
            channel=HostChannel.from_element(channel) if channel is not None else None,
            interface=Interface.from_element(nic) if nic is not None else None,
        )


@dataclass
class Domain:
    name: str
    uuid: str | None
    tag: Tag
    os: OS
    devices: Devices
    memory_mib: int = 256
    vcpus: int = 1
    domain_type: str = "qemu"
    emulator: str | None = None
    features: list[str] = field(default_factory=lambda: ["acpi"])
    fw_cfg: list[FwCfgFile] = field(default_factory=list)
    tb_cache_mib: int | None = None  # TCG's translation cache, capped (QEMU's default is up to 1 GiB)
    genid: str | None = None  # VM generation ID: a restored clone's kernel sees it change and reseeds
    share_memory: bool = True  # False: <nosharepages/>, QEMU never offers its pages to KSM

    def to_xml(self) -> str:
        root = ET.Element("domain", type=self.domain_type)
        ET.SubElement(root, "name").text = self.name
        if self.uuid:
            ET.SubElement(root, "uuid").text = self.uuid
        if self.genid:
            ET.SubElement(root, "genid").text = self.genid
        meta = ET.SubElement(root, "metadata")
        meta.append(self.tag.to_element())
        ET.SubElement(root, "memory", unit="KiB").text = str(self.memory_mib * 1024)
        if not self.share_memory:
            ET.SubElement(ET.SubElement(root, "memoryBacking"), "nosharepages")
        ET.SubElement(root, "vcpu").text = str(self.vcpus)
        if self.fw_cfg:
            sysinfo = ET.SubElement(root, "sysinfo", type="fwcfg")
            for entry in self.fw_cfg:
                ET.SubElement(sysinfo, "entry", name=entry.name, file=str(entry.file))
        root.append(self.os.to_element())
        feats = ET.SubElement(root, "features")
        for feat in self.features:
            ET.SubElement(feats, feat)
        if self.tb_cache_mib is not None and self.domain_type == "qemu":
            tcg = ET.SubElement(feats, "tcg")
            ET.SubElement(tcg, "tb-cache", unit="MiB").text = str(self.tb_cache_mib)
        ET.SubElement(root, "on_poweroff").text = "destroy"
        # a reboot from inside the guest powers it off: every boot then goes through the driver's
        # start() (fresh serial log), so a rebooting desktop never looks ready from its last boot
        ET.SubElement(root, "on_reboot").text = "destroy"
        ET.SubElement(root, "on_crash").text = "destroy"
        root.append(self.devices.to_element(self.emulator))
        ET.indent(root)
        return ET.tostring(root, encoding="unicode") + "\n"

    @classmethod
    def parse(cls, xml: str) -> Domain:
        root = ET.fromstring(xml)  # noqa: S314 - XML comes from our own libvirtd
        tag_el = root.find(f"metadata/{{{NS}}}desktop")
        if tag_el is None:
            raise ValueError("domain XML: not a ShiftDesk desktop (no shiftdesk:desktop metadata)")
        os_el, dev_el = root.find("os"), root.find("devices")
        if os_el is None or dev_el is None:
            raise ValueError("domain XML: missing <os> or <devices>")
        memory = root.find("memory")
        mem_kib = int(memory.text or 0) if memory is not None else 0
        unit = memory.get("unit", "KiB") if memory is not None else "KiB"
        factor = {"KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "GiB": 1024 * 1024}.get(unit, 1)
        return cls(
            name=root.findtext("name") or "",
            uuid=root.findtext("uuid"),
            tag=Tag.from_element(tag_el),
            os=OS.from_element(os_el),
            devices=Devices.from_element(dev_el),
            memory_mib=mem_kib * factor // 1024,
            vcpus=int(root.findtext("vcpu") or 1),
            share_memory=root.find("memoryBacking/nosharepages") is None,
            domain_type=root.get("type", "qemu"),
            emulator=dev_el.findtext("emulator"),
            features=[f.tag for f in root.find("features") or [] if f.tag != "tcg"],
            tb_cache_mib=_tb_cache_mib(root),
            genid=root.findtext("genid"),
            fw_cfg=[FwCfgFile(name=e.get("name", ""), file=Path(e.get("file", "")))
                    for e in root.findall("sysinfo[@type='fwcfg']/entry")],
        )


def _tb_cache_mib(root: ET.Element) -> int | None:
    el = root.find("features/tcg/tb-cache")
    if el is None or not el.text:
        return None
    factor = {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}.get(el.get("unit", "MiB"), 1)
    return int(int(el.text) * factor)


def read_tag(xml: str) -> Tag | None:
    """The ShiftDesk tag of any domain's XML, or None for domains that are not ours."""
    root = ET.fromstring(xml)  # noqa: S314 - XML comes from our own libvirtd
    el = root.find(f"metadata/{{{NS}}}desktop")
    return Tag.from_element(el) if el is not None else None


def without_fw_cfg(xml: str, drop: Callable[[FwCfgFile], bool]) -> str | None:
    """libvirt's XML of a domain minus the fw_cfg entries DROP selects, or None if it has none.

    Works on libvirt's own XML, not through `Domain`, so everything libvirt added (addresses,
    labels) stays as it is: only the entries go (and their <sysinfo> when it is left empty)."""
    root = ET.fromstring(xml)  # noqa: S314 - XML comes from our own libvirtd
    changed = False
    for sysinfo in root.findall("sysinfo[@type='fwcfg']"):
        for entry in sysinfo.findall("entry"):
            if drop(FwCfgFile(name=entry.get("name", ""), file=Path(entry.get("file", "")))):
                sysinfo.remove(entry)
                changed = True
        if len(sysinfo) == 0:
            root.remove(sysinfo)
    return ET.tostring(root, encoding="unicode") if changed else None
