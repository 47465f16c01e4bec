"""LibvirtHypervisor: the Hypervisor port on libvirt-python.

Every domain it creates carries a ShiftDesk tag (installation, pool, desktop id) in its
metadata; listing only ever returns tagged domains of this installation, so a test run and a
demo can share one libvirtd without ever touching each other's desktops.

QEMU runs as its own unprivileged user under libvirt's seccomp sandbox and DAC labels
(scripts/setup-host.sh); host_access.py says which directories it may search and why.
"""

from __future__ import annotations

import os
import pwd
import re
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import libvirt

from controlplane.domain import naming
from controlplane.domain.ports import DesktopSpec, ObservedDomain
from controlplane.drivers.libvirt import host_access, kvm_probe, linked_clone
from controlplane.drivers.libvirt.domxml import (
    NS,
    OS,
    Devices,
    Disk,
    Domain,
    FwCfgFile,
    SerialLog,
    Tag,
    VncGraphics,
    without_fw_cfg,
)
from controlplane.drivers.libvirt.errors import is_not_found, translate
from controlplane.errors import PermanentError

READY_MARKER = "SHIFTDESK-READY name="
JOIN_FW_CFG = "opt/org.shiftdesk/join"


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we handle them as exceptions instead."""


libvirt.registerErrorHandler(_quiet, None)


class LibvirtHypervisor:
    def __init__(self, *, uri: str, instance: str, storage_pool: str, overlay_dir: Path,
                 run_dir: Path, readiness: str = "serial", domain_type: str = "qemu",
                 probe_cache: Path | None = None, data_dir: Path | None = None) -> None:
        self.uri = uri
        self.instance = instance
        self.pool_name = storage_pool
        self.overlay_dir = overlay_dir
        self.run_dir = run_dir
        self.readiness = readiness
        self.domain_type = domain_type  # "auto": decided by a real KVM probe at first define
        self.probe_cache = probe_cache or run_dir
        self.data_dir = data_dir  # QEMU's group may search from here down to the files it opens
        self.qemu: host_access.QemuUser | None = None  # who QEMU runs as, learnt at connect
        self._desktop_re = re.compile(rf"{naming.PREFIX}-{re.escape(instance)}-[a-z][a-z0-9-]{{0,22}}[a-z0-9]"
                                      r"-[0-9a-f]{6}")
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    # --- connection ---------------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None or not self._conn.isAlive():
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as err:
                    raise translate(err, f"connect to {self.uri}") from err
                self.qemu = host_access.QemuUser.from_capabilities(self._conn.getCapabilities())
                self._grant_qemu(self.run_dir.parent, self.overlay_dir)
                host_access.prepare_run_dir(self.run_dir, self.qemu)
            return self._conn

    def _grant_qemu(self, *dirs: Path) -> None:
        """Let an unprivileged QEMU search DIRS (inside DATA_DIR only); see host_access."""
        if self.qemu is None or self.qemu.is_root or self.data_dir is None:
            return
        for directory in dirs:
            directory.mkdir(mode=host_access.PRIVATE, parents=True, exist_ok=True)
            host_access.grant_search(self.data_dir, directory, self.qemu.gid)

    def _pool(self) -> libvirt.virStoragePool:
        return linked_clone.ensure_pool(self.conn, self.pool_name, self.overlay_dir)

    def _lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as err:
            if is_not_found(err):
                return None
            raise translate(err, f"look up domain {name}") from err

    # --- observation --------------------------------------------------------------------------

    def list_desktops(self) -> dict[str, ObservedDomain]:
        found: dict[str, ObservedDomain] = {}
        for dom in self.conn.listAllDomains(0):
            tag = self._tag(dom)
            if tag is None or tag.instance != self.instance:
                continue
            running = bool(dom.isActive())
            name = dom.name()
            found[name] = ObservedDomain(name=name, pool=tag.pool, desktop_id=tag.desktop_id,
                                         running=running, ready=running and self._signalled(name),
                                         generation=tag.generation)
        return found

    def _tag(self, dom: libvirt.virDomain) -> Tag | None:
        try:
            xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS, 0)
        except libvirt.libvirtError:
            return None  # no ShiftDesk metadata: not ours
        return Tag.from_element(ET.fromstring(xml))  # noqa: S314 - from our own libvirtd

    def list_overlays(self) -> set[str]:
        prefix = f"{naming.PREFIX}-{self.instance}-"
        names = (naming.desktop_of_volume(v) for v in linked_clone.list_volumes(self._pool()))
        return {n for n in names if n and n.startswith(prefix)}

    def is_ready(self, name: str) -> bool:
        dom = self._lookup(name)
        return dom is not None and bool(dom.isActive()) and self._signalled(name)

    def _signalled(self, name: str) -> bool:
        if self.readiness == "running":
            return True
        try:
            text = self.serial_log(name).read_text(errors="replace")
        except FileNotFoundError:
            return False
        return f"{READY_MARKER}{name} " in text or text.rstrip().endswith(f"{READY_MARKER}{name}")

    def serial_log(self, name: str) -> Path:
        return self.run_dir / f"{name}.serial"

    def vnc_socket(self, name: str) -> Path:
        """Only for a desktop name of this installation: never a path a caller could steer."""
        if not isinstance(name, str) or not self._desktop_re.fullmatch(name) or "--" in name:
            raise PermanentError(f"vnc socket: {name!r} is not a desktop of installation {self.instance!r}")
        return self.run_dir / f"{name}.vnc"

    def join_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.join"

    def discard_join_secret(self, name: str) -> None:
        """The guest has its secret. The definition stops pointing at the file first (QEMU refuses
        to start a domain whose fw_cfg file is missing), then the file goes: a crash in between
        leaves a file to remove, never a desktop that cannot start again."""
        self._drop_fw_cfg(name, lambda entry: entry.name == JOIN_FW_CFG)
        self.join_file(name).unlink(missing_ok=True)

    def _drop_fw_cfg(self, name: str, drop: Callable[[FwCfgFile], bool]) -> None:
        dom = self._lookup(name)
        if dom is None:
            return
        try:
            xml = without_fw_cfg(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), drop)
            if xml is not None:
                self.conn.defineXML(xml)
        except libvirt.libvirtError as err:
            raise translate(err, f"drop the join secret from the definition of {name}") from err

    # --- actions ------------------------------------------------------------------------------

    def create_overlay(self, spec: DesktopSpec) -> Path:
        capacity = _virtual_size(spec.image.disk)
        return linked_clone.create_overlay(self._pool(), naming.volume_name(spec.name),
                                           spec.image.disk, capacity)

    def delete_overlay(self, name: str) -> None:
        linked_clone.delete_overlay(self._pool(), naming.volume_name(name))

    def domain_model(self, spec: DesktopSpec, uuid: str | None = None) -> Domain:
        return Domain(
            name=spec.name,
            uuid=uuid,
            tag=Tag(instance=self.instance, pool=spec.pool, desktop_id=spec.desktop_id,
                    generation=spec.generation),
            os=OS(kernel=spec.image.kernel, initrd=spec.image.initrd,
                  cmdline=f"{spec.image.cmdline} shiftdesk.name={spec.name}"),
            devices=Devices(
                disk=Disk(pool=self.pool_name, volume=naming.volume_name(spec.name)),
                serial=SerialLog(self.serial_log(spec.name)),
                graphics=VncGraphics(self.vnc_socket(spec.name)),
            ),
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            domain_type=self.resolved_domain_type(spec.image.kernel),
            fw_cfg=[FwCfgFile(JOIN_FW_CFG, self.join_file(spec.name))] if spec.join_secret else [],
        )

    def resolved_domain_type(self, kernel: Path) -> str:
        if self.domain_type != "auto":
            return self.domain_type
        if not kernel.exists():
            return "qemu"  # nothing to probe with (unit tests on the test driver): the safe choice
        self.conn  # noqa: B018 - connecting learns who QEMU runs as
        runas = pwd.getpwuid(self.qemu.uid).pw_name if self.qemu and not self.qemu.is_root else None
        self.domain_type = kvm_probe.cached_domain_type(kernel, self.probe_cache, runas)
        return self.domain_type

    def define(self, spec: DesktopSpec) -> None:
        image = spec.image
        self.conn  # noqa: B018 - connecting learns who QEMU runs as
        self._grant_qemu(*{p.parent for p in (image.disk, image.kernel, image.initrd) if p is not None})
        if spec.join_secret:
            _write_secret(self.join_file(spec.name), spec.join_secret)
        existing = self._lookup(spec.name)
        uuid = existing.UUIDString() if existing is not None else None
        try:
            self.conn.defineXML(self.domain_model(spec, uuid).to_xml())
        except libvirt.libvirtError as err:
            raise translate(err, f"define {spec.name}") from err

    def start(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None:
            raise PermanentError(f"start {name}: domain is not defined")
        if dom.isActive():
            return
        self._drop_fw_cfg(name, lambda entry: not entry.file.exists())  # a secret discarded long ago
        self.serial_log(name).unlink(missing_ok=True)  # readiness counts from this boot's line only
        try:
            dom.create()
        except libvirt.libvirtError as err:
            if dom.isActive():
                return  # a concurrent start won the race: same outcome
            raise translate(err, f"start {name}") from err
        host_access.close_socket(self.vnc_socket(name))

    def reboot(self, name: str) -> None:
        if self._lookup(name) is None:
            raise PermanentError(f"reboot {name}: domain is not defined")
        self.destroy(name)
        self.start(name)

    def destroy(self, name: str) -> None:
        dom = self._lookup(name)
        if dom is None or not dom.isActive():
            return
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            if is_not_found(err) or err.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return  # it went away on its own
            raise translate(err, f"destroy {name}") from err

    def undefine(self, name: str) -> None:
        self.destroy(name)
        dom = self._lookup(name)
        if dom is not None:
            try:
                dom.undefine()
            except libvirt.libvirtError as err:
                if not is_not_found(err):
                    raise translate(err, f"undefine {name}") from err
        self.serial_log(name).unlink(missing_ok=True)
        self.discard_join_secret(name)

    def selftest(self) -> float:
        """Time define + undefine of a throwaway domain (the half-present /dev/kvm trap check)."""
        root = ET.Element("domain", type="qemu")
        ET.SubElement(root, "name").text = f"{naming.PREFIX}-{self.instance}-selftest"
        ET.SubElement(root, "uuid").text = str(uuidlib.uuid4())
        ET.SubElement(root, "memory", unit="KiB").text = "65536"
        os_el = ET.SubElement(root, "os")
        ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
        conn = self.conn
        began = time.perf_counter()
        dom = conn.defineXML(ET.tostring(root, encoding="unicode"))
        dom.undefine()
        return (time.perf_counter() - began) * 1000


def _write_secret(path: Path, secret: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)


def _virtual_size(disk: Path) -> int:
    """Virtual size of a qcow2 file, from its header (bytes 24..32, big-endian)."""
    try:
        with disk.open("rb") as fh:
            header = fh.read(32)
    except FileNotFoundError as err:
        raise PermanentError(f"golden image disk {disk} is missing") from err
    if header[:4] != b"QFI\xfb":
        raise PermanentError(f"golden image disk {disk} is not qcow2")
    return int.from_bytes(header[24:32], "big")
