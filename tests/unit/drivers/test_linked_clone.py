"""The desktops' storage pool, ensured by many at once: two threads of one control plane (a pass
and a hosts view) or two replicas may find it missing at the same moment; the second to define
or start it must find it done, not fail."""

from __future__ import annotations

import uuid
from pathlib import Path

import libvirt
import pytest

from controlplane.drivers.libvirt import linked_clone

NOT_FOUND = libvirt.VIR_ERR_NO_STORAGE_POOL


class Racing:
    """A connection on which another ensures the pool (defined, and started with START) between
    our look-up and our define: the first look-up finds nothing, as it would have just before."""

    def __init__(self, conn: libvirt.virConnect, path: Path, *, start: bool) -> None:
        self.conn, self.path, self.start, self.looked = conn, path, start, 0

    def storagePoolLookupByName(self, name: str) -> libvirt.virStoragePool:  # noqa: N802 - libvirt's name
        self.looked += 1
        if self.looked == 1:
            theirs = self.conn.storagePoolDefineXML(
                f"<pool type='dir'><name>{name}</name><target><path>{self.path}</path></target></pool>")
            if self.start:
                theirs.create(0)
            err = libvirt.libvirtError("no storage pool with matching name")
            err.err = (NOT_FOUND, 0, "no storage pool", 0, "", None, None, 0, 0)
            raise err
        return self.conn.storagePoolLookupByName(name)

    def storagePoolDefineXML(self, xml: str, flags: int = 0) -> libvirt.virStoragePool:  # noqa: N802
        return self.conn.storagePoolDefineXML(xml, flags)


@pytest.mark.parametrize("started", [False, True])
def test_a_pool_another_defined_meanwhile_is_found_not_refused(tmp_path, started):
    conn = libvirt.open("test:///default")
    name = f"sd-race-{uuid.uuid4().hex[:8]}"
    pool = linked_clone.ensure_pool(Racing(conn, tmp_path, start=started), name, tmp_path)
    try:
        assert pool.name() == name and pool.isActive()
    finally:
        pool.destroy()
        pool.undefine()
