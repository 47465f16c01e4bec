"""Desktops survive a cold start (issue 8, item 3), on real QEMU and, joined, a real Samba AD.

A host power cut is every domain of the pool destroyed at once; then the control plane starts
again (a new context and reconciler on the same database and libvirtd). Every desktop must come
back to ready by itself, after a real new boot (its boot counter moved on, so no readiness line
of the previous boot counted), and from the restarted control plane's first pass on none may be
claimable while its domain is not running and ready. An admin's reboot must work the same way,
for a desktop whose one-time join secret the host has long forgotten.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from sqlmodel import Session

from controlplane.db import audit, tickets
from controlplane.db import pools as pool_rows
from controlplane.db.engine import session_scope
from controlplane.domain.desktop import DesktopState as S
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.main import build_context
from controlplane.services import desktops, pools
from controlplane.services.context import Context
from controlplane.services.reconciler import Reconciler
from tests.integration.conftest import tagged_domains

SIZE = 2


def power_cut(instance: str) -> None:
    for name in tagged_domains(instance):
        subprocess.run(["virsh", "-c", "qemu:///system", "destroy", name], capture_output=True, check=False)


def claimable(ctx: Context, pool: str) -> list[str]:
    """Every desktop the broker's claim would hand out right now (claimed, then rolled back)."""
    names = []
    with Session(ctx.engine) as session:
        pool_id = pool_rows.get_or_raise(session=session, name=pool).id or 0
        while (row := tickets.claim_ready(session=session, pool_id=pool_id, username=f"probe{len(names)}",
                                          now=ctx.clock.now())) is not None:
            names.append(row.name)
        session.rollback()
    return names


def boots(ctx: Context, name: str) -> int:
    found = re.findall(rf"SHIFTDESK-READY name={name} boots=(\d+)", ctx.hypervisor.serial_log(name).read_text())
    assert len(found) == 1, f"{name}: one readiness line per boot, found {found}"
    return int(found[0])


def recover(ctx: Context, pool: str) -> int:
    """Reconcile until converged, checking after every pass that only running, ready desktops can be
    claimed. Returns the number of passes."""
    passes = []

    def check(_plan: object) -> None:
        passes.append(1)
        observed = ctx.hypervisor.list_desktops()
        for name in claimable(ctx, pool):
            dom = observed.get(name)
            assert dom is not None and dom.running and dom.ready, \
                f"{name} can be handed out while its domain is {dom} (pass {len(passes)})"

    rec = Reconciler(ctx)
    try:
        assert rec.run_until_converged(timeout=240, on_pass=check), "the desktops did not come back"
    finally:
        rec.close()
    return len(passes)


@pytest.mark.parametrize("joined, clone", [(False, "cold"), (True, "cold"), (False, "instant")],
                         ids=["plain", "ad-joined", "instant-clones"])
def test_every_desktop_comes_back_from_a_host_restart_and_none_is_handed_out_meanwhile(
        real_ctx, real_settings, golden, request, joined, clone):
    directory = None
    if joined:  # a computers OU is configured: each desktop gets an account and a one-time join secret
        ad = request.getfixturevalue("ad")
        directory = LdapDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                                  bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert),
                                  computers_ou=ad.computers_ou, instance=real_settings.instance)
        real_ctx.directory = directory
    pools.create(real_ctx, name="cold", image="busybox-desktop", size=SIZE, clone=clone, actor="test")
    recover(real_ctx, "cold")
    names = {d.name for d, _ in desktops.list_all(real_ctx)}
    assert len(names) == SIZE
    if clone == "cold":
        assert all(boots(real_ctx, n) == 1 for n in names)
    else:  # restored, not booted: the disk counts the template's boot, the clone has said nothing yet
        assert all(real_ctx.hypervisor.list_desktops()[n].cloned for n in names)
    if directory is not None:
        assert directory.list_computers() == names
        assert not any(real_ctx.hypervisor.join_file(n).exists() for n in names), "secrets must be discarded"

    power_cut(real_settings.instance)
    assert not any(d.running for d in real_ctx.hypervisor.list_desktops().values())
    ctx = build_context(real_settings, directory=directory)  # the control plane starts again
    recover(ctx, "cold")
    rows = [d for d, _ in desktops.list_all(ctx)]
    assert {d.name for d in rows} == names, "the same desktops come back, none replaced"
    assert all(d.state == S.READY for d in rows)
    observed = ctx.hypervisor.list_desktops()
    assert all(observed[n].running and observed[n].ready for n in names)
    after_cut = {n: boots(ctx, n) for n in names}  # one READY line each: readiness is from the new boot
    if clone == "cold":
        assert set(after_cut.values()) == {2}, "readiness must come from the new boot"
    assert not any(observed[n].cloned for n in names), "a clone started cold is a booted desktop now"
    with session_scope(ctx.engine) as session:
        repairs = [e for e in audit.list_recent(session=session, limit=1000) if e.action == "desktop.repair"]
    assert sorted(e.target for e in repairs) == sorted(names), "one audited repair per desktop, not one per pass"
    if directory is not None:
        assert directory.list_computers() == names, "the accounts (and the secrets the guests hold) stay"

    victim = sorted(names)[0]
    desktops.reboot(ctx, victim, actor="test")  # an admin's reboot, long after the secret was discarded
    assert victim not in claimable(ctx, "cold")
    recover(ctx, "cold")
    assert desktops.get(ctx, victim)[0].state == S.READY and boots(ctx, victim) == after_cut[victim] + 1

    pools.delete(ctx, "cold", actor="test")
    recover_all = Reconciler(ctx)
    assert recover_all.run_until_converged(timeout=180)
    recover_all.close()
    assert tagged_domains(real_settings.instance) == []
    if directory is not None:
        assert directory.list_computers() == set()


def test_a_guest_that_reboots_itself_is_not_handed_out_until_its_new_boot_is_ready(real_ctx, golden):
    """A reset from inside (or a guest crash) powers the domain off (on_reboot=destroy): it is
    started again through the driver, with a fresh serial log, and claimable only when ready."""
    pools.create(real_ctx, name="warm", image="busybox-desktop", size=1, clone="cold", actor="test")
    recover(real_ctx, "warm")
    (name,) = {d.name for d, _ in desktops.list_all(real_ctx)}
    subprocess.run(["virsh", "-c", "qemu:///system", "reset", name], capture_output=True, check=True)
    for _ in range(50):  # QEMU leaves on a reset request instead of booting again in place
        if not real_ctx.hypervisor.list_desktops()[name].running:
            break
        time.sleep(0.1)
    assert not real_ctx.hypervisor.list_desktops()[name].running
    assert not real_ctx.hypervisor.is_ready(name)  # what the broker asks before it hands a desktop out
    recover(real_ctx, "warm")
    assert desktops.get(real_ctx, name)[0].state == S.READY and boots(real_ctx, name) == 2
    pools.delete(real_ctx, "warm", actor="test")
    rec = Reconciler(real_ctx)
    assert rec.run_until_converged(timeout=180)
    rec.close()
