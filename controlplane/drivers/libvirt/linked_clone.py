"""Linked clones: a desktop's disk is a qcow2 overlay whose backing file is the golden image.

Created through libvirt's storage API in a directory pool we own, so libvirt knows every
volume (and so do we: listing the pool finds orphans). Creating an overlay is O(1) in the size
of the golden image; never a full copy.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from controlplane.drivers.libvirt.errors import is_not_found, translate


def ensure_pool(conn: libvirt.virConnect, name: str, path: Path, *, remote: bool = False) -> libvirt.virStoragePool:
    """Our directory storage pool, defined, built and active. Idempotent, also when another
    thread or process (a control-plane replica, a host view asking capacity during a pass)
    ensures it at the same moment: whoever defines or starts it second finds it done. The
    directory of a REMOTE libvirt's pool is on its host: libvirt makes it there when it starts
    the pool (an existing one keeps its mode); a local one is made here (the test driver
    cannot build)."""
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError as err:
        if not is_not_found(err):
            raise translate(err, f"look up storage pool {name}") from err
        if not remote:
            path.mkdir(parents=True, exist_ok=True)
        pool = _define_pool(conn, name, path)
    if not pool.isActive():
        try:
            pool.create(libvirt.VIR_STORAGE_POOL_CREATE_WITH_BUILD if remote else 0)
        except libvirt.libvirtError as err:
            if not pool.isActive():
                raise translate(err, f"start storage pool {name}") from err
    return pool


def _define_pool(conn: libvirt.virConnect, name: str, path: Path) -> libvirt.virStoragePool:
    root = ET.Element("pool", type="dir")
    ET.SubElement(root, "name").text = name
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "path").text = str(path)
    try:
        pool = conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
    except libvirt.libvirtError as err:
        try:
            return conn.storagePoolLookupByName(name)  # defined by another meanwhile
        except libvirt.libvirtError:
            raise translate(err, f"define storage pool {name}") from err
    pool.setAutostart(1)
    return pool


def volume_xml(name: str, backing: Path, capacity_bytes: int) -> str:
    root = ET.Element("volume", type="file")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", unit="bytes").text = str(capacity_bytes)
    target = ET.SubElement(root, "target")
    ET.SubElement(target, "format", type="qcow2")
    backing_el = ET.SubElement(root, "backingStore")
    ET.SubElement(backing_el, "path").text = str(backing)
    ET.SubElement(backing_el, "format", type="qcow2")
    return ET.tostring(root, encoding="unicode")


def create_overlay(pool: libvirt.virStoragePool, name: str, backing: Path, capacity_bytes: int) -> Path:
    """Create (or find) overlay NAME backed by BACKING; return its path."""
    try:
        return Path(pool.storageVolLookupByName(name).path())
    except libvirt.libvirtError as err:
        if not is_not_found(err):
            raise translate(err, f"look up volume {name}") from err
    try:
        vol = pool.createXML(volume_xml(name, backing, capacity_bytes), 0)
    except libvirt.libvirtError as err:
        raise translate(err, f"create overlay {name}") from err
    return Path(vol.path())


def backed_by(pool: libvirt.virStoragePool, backing: Path) -> list[str]:
    """Names of POOL's volumes whose backing file is BACKING. A call per volume: for the rare
    question whether a retired template's disk may go, not for every pass."""
    try:
        pool.refresh(0)
        volumes = pool.listAllVolumes(0)
    except libvirt.libvirtError as err:
        raise translate(err, "list volumes") from err
    found = []
    for vol in volumes:
        try:
            path = ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")  # noqa: S314 - our libvirtd
        except libvirt.libvirtError:
            continue  # deleted meanwhile
        if path is not None and Path(path) == backing:
            found.append(vol.name())
    return found


def delete_overlay(pool: libvirt.virStoragePool, name: str) -> None:
    """Delete volume NAME; a missing volume is success."""
    try:
        pool.storageVolLookupByName(name).delete(0)
    except libvirt.libvirtError as err:
        if not is_not_found(err):
            raise translate(err, f"delete overlay {name}") from err


def list_volumes(pool: libvirt.virStoragePool) -> list[str]:
    pool.refresh(0)
    return list(pool.listVolumes())
