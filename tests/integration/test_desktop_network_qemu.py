"""Desktop networking with real QEMU guests (busybox): instant clones restored from one template
get a NIC of their own after the restore, so no two clones share a MAC or an address, and each
guest really uses the MAC and address the control plane gave it (the host's DHCP server leased
them, the bridge learned each MAC on that desktop's own port)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from controlplane.config import NetworkSettings
from controlplane.drivers.libvirt.domxml import Domain
from controlplane.main import build_context
from controlplane.services import desktops, images, pools
from controlplane.services.reconciler import Reconciler
from tests.integration.conftest import purge


@pytest.fixture
def net_ctx(real_settings):
    subnet = IPv4Network(f"10.235.{secrets.randbelow(200) + 20}.0/24")
    settings = real_settings.model_copy(update={"network": NetworkSettings(enabled=True, subnet=subnet)})
    ctx = build_context(settings)
    try:
        yield ctx
    finally:
        purge(settings)
        ctx.network.remove()
        shutil.rmtree(Path("/run/shiftdesk") / settings.instance, ignore_errors=True)


def leases(ctx) -> dict[str, str]:
    """MAC -> address, as the host's DHCP server handed them out."""
    path = ctx.network.state_dir / "dhcp" / "leases"
    rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
    return {row[1]: row[2] for row in rows if len(row) >= 3}


def learned(bridge: str) -> dict[str, str]:
    """MAC -> port the bridge saw it on (what the guests really send with)."""
    out = subprocess.run(["bridge", "fdb", "show", "br", bridge], capture_output=True, text=True, check=True).stdout
    return {f[0]: f[2] for f in (line.split() for line in out.splitlines()) if len(f) > 2 and f[1] == "dev"}


def test_instant_clones_each_get_their_own_nic_mac_and_address(net_ctx):
    ctx = net_ctx
    images.build(ctx, "busybox-desktop", actor="test")
    pools.create(ctx, name="floor", image="busybox-desktop", size=2, actor="test")
    pools.create(ctx, name="night", image="busybox-desktop", size=1, clone="cold", actor="test")
    rec = Reconciler(ctx)
    try:
        assert rec.run_until_converged(timeout=600), "the desktops never became ready"
    finally:
        rec.close()
    rows = [row for row, _ in desktops.list_all(ctx)]
    assert len(rows) == 3 and all(r.ipv4 for r in rows)
    net = ctx.network.network
    nics = {r.name: net.nic(r.name, IPv4Address(r.ipv4)) for r in rows}
    assert len({n.mac for n in nics.values()}) == 3 and len({n.ipv4 for n in nics.values()}) == 3

    conn = ctx.hypervisor.conn
    for name, nic in nics.items():
        live = Domain.parse(conn.lookupByName(name).XMLDesc(0)).devices.interface
        assert live is not None and (live.mac, live.tap, live.bridge) == (nic.mac, nic.tap, net.bridge), name
        assert conn.lookupByName(name).XMLDesc(0).count("<interface") == 1

    deadline = time.monotonic() + 120
    while not all(leases(ctx).get(n.mac) == str(n.ipv4) for n in nics.values()):
        assert time.monotonic() < deadline, f"not every desktop leased its address: {leases(ctx)}"
        time.sleep(1)
    seen = learned(net.bridge)
    for name, nic in nics.items():
        assert seen.get(nic.mac) == nic.tap, f"{name} does not send with its own MAC on its own port"
    assert len(leases(ctx)) == 3  # nobody leased anything else (a template's MAC, say)
