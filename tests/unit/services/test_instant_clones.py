"""Instant-clone pools against the fake hypervisor: templates made once, clones restored from them,
the cold fallback, identity timeouts, quarantine, template removal, crashes mid-way."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.domain.ports import TemplateKey
from controlplane.services import desktops, policies, pools, templates
from tests.conftest import SALES
from tests.unit.services.test_reconciler import Crash, assert_consistent, crash_once_at, settle, states


@pytest.fixture(autouse=True)
def no_computer_accounts(ctx):
    """busybox has no host channel: only a desktop that needs no join secret can be restored."""
    ctx.directory = None


def actions(ctx, name):
    with session_scope(ctx.engine) as session:
        return [e.action for e in audit.list_recent(session=session, limit=500) if e.target == name]


def test_an_instant_pool_boots_one_template_and_restores_every_desktop(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready"] * 3
    verbs = [v for v, _ in hv.calls]
    assert verbs.count("build_template") == 1 and verbs.count("save_template") == 1
    assert verbs.count("restore_clone") == 3 and "define" not in verbs and "start" not in verbs
    assert hv.saved == {TemplateKey(image.id, 256, 1)}
    assert_consistent(ctx, hv)


def test_a_desktop_without_a_host_channel_that_needs_a_join_secret_is_booted(ctx, hv, image, directory):
    ctx.directory = directory  # its secret could only reach a serial image at boot (fw_cfg)
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    (row, _), = desktops.list_all(ctx)
    assert not hv.domains[row.name].cloned and ("define", row.name) in hv.calls
    assert row.name in directory.computers


def test_a_cold_pool_never_makes_a_template(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, clone="cold", actor="t")
    settle(ctx)
    assert states(ctx) == ["ready", "ready"]
    assert not hv.saved and not any(v.endswith("template") for v, _ in hv.calls)


def test_a_failed_restore_boots_the_desktop_and_rebuilds_the_template(ctx, hv, image):
    hv.fail_restore = True
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    assert states(ctx) == ["ready"]
    (row, _), = desktops.list_all(ctx)
    assert "desktop.restore_failed" in actions(ctx, row.name)
    verbs = [v for v, _ in hv.calls]
    assert "remove_template" in verbs and "define" in verbs and "start" in verbs
    assert not hv.domains[row.name].cloned


def test_a_template_that_cannot_be_restored_is_retired_not_removed_while_clones_are_backed_by_it(ctx, hv, image):
    """Its clones' disks are overlays on its disk: removing it (and building the same key again)
    would put other bytes under them. New desktops boot meanwhile, without trying it again; once
    its last clone is gone it is removed and built again, and clones are restored again."""
    key = TemplateKey(image.id, 256, 1)
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    settle(ctx)
    clones = {d.name for d, _ in desktops.list_all(ctx)}
    assert all(hv.domains[n].cloned for n in clones)
    hv.fail_restore = True
    pools.scale(ctx, "sales", 3, actor="t")  # one new desktop: one try (desktops of a pass go at once)
    settle(ctx)
    assert states(ctx) == ["ready"] * 3
    verbs = [v for v, _ in hv.calls]
    assert "retire_template" in verbs and "remove_template" not in verbs
    assert verbs.count("restore_clone") == 3
    assert key in hv.retired and all(hv.domains[n].running for n in clones)
    pools.scale(ctx, "sales", 5, actor="t")
    settle(ctx)
    assert [v for v, _ in hv.calls].count("restore_clone") == 3  # a retired template is not tried again
    assert states(ctx) == ["ready"] * 5 and ("remove_template", key.slug) not in hv.calls
    hv.fail_restore = False
    pools.scale(ctx, "sales", 0, actor="t")  # the clones go: nothing is backed by it any more
    settle(ctx)
    assert ("remove_template", key.slug) in hv.calls and key not in hv.retired
    pools.scale(ctx, "sales", 2, actor="t")
    settle(ctx)
    verbs = [v for v, _ in hv.calls]
    assert verbs.count("build_template") == 2 and verbs.count("restore_clone") == 5
    assert all(hv.domains[d.name].cloned for d, _ in desktops.list_all(ctx))


def test_a_desktop_waits_for_its_template_then_boots_if_it_never_comes(ctx, hv, image, clock):
    hv.boot_passes = 10_000  # the template never becomes ready
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle_passes(ctx, 3)
    assert states(ctx) == ["provisioning"] and not any(v == "define" for v, _ in hv.calls)
    clock.advance(ctx.limits.template_wait.total_seconds() + 1)
    settle_passes(ctx, 2)
    assert "define" not in [v for v, _ in hv.calls]  # its template is still booting: wait for it
    clock.advance(ctx.limits.boot_timeout.total_seconds())
    settle_passes(ctx, 2)
    verbs = [v for v, _ in hv.calls]
    assert "define" in verbs and "start" in verbs and "restore_clone" not in verbs  # booted instead


def test_a_clone_that_never_confirms_its_identity_is_failed_and_replaced(ctx, hv, image, clock):
    hv.silent_clones = True
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle_passes(ctx, 4)  # the template is saved, the clone restored; it says nothing
    (row, _), = desktops.list_all(ctx)
    assert hv.domains[row.name].cloned and states(ctx) == ["provisioning"]
    clock.advance(ctx.limits.identity_timeout.total_seconds() + 1)
    settle_passes(ctx, 2)
    got = {d.name: (str(d.state), d.reason) for d, _ in desktops.list_all(ctx)}
    assert got[row.name][0] == "failed" and "identity" in (got[row.name][1] or "")
    assert not hv.domains[row.name].running  # destroyed
    assert len(got) == 2  # and replaced


def test_a_quarantined_guest_is_never_handed_out(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    (row, _), = desktops.list_all(ctx)
    hv.quarantined[row.name] = "flood: more than 20 messages/s"
    settle(ctx)
    names = {d.name: str(d.state) for d, _ in desktops.list_all(ctx)}
    assert row.name not in names and list(names.values()) == ["ready"]


def test_the_template_goes_once_no_pool_and_no_desktop_uses_its_image(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    pools.update(ctx, "sales", size=None, min_size=None, max_size=None, groups=None, clone="cold", actor="t")
    settle(ctx)
    assert hv.saved, "a clone is still backed by the template"
    pools.delete(ctx, "sales", actor="t")
    settle(ctx)
    assert not hv.saved and not hv.templates
    assert ("remove_template", TemplateKey(image.id, 256, 1).slug) in hv.calls


@pytest.mark.parametrize("point", ["provision.after-row", "provision.after-restore"])
def test_a_crash_while_cloning_converges(ctx, hv, image, point):
    pools.create(ctx, name="sales", image="busybox-desktop", size=2, actor="t")
    crash_once_at(ctx, point)
    with pytest.raises(Crash):
        settle(ctx, passes=20)
    settle(ctx)
    assert states(ctx) == ["ready", "ready"]
    assert_consistent(ctx, hv)


def settle_passes(ctx, n):
    from controlplane.services.reconciler import Reconciler
    rec = Reconciler(ctx)
    try:
        for _ in range(n):
            rec.pass_once()
    finally:
        rec.close()


PRIVATE_SALES = f"""
name: private-sales
bind:
  groups: ["{SALES}"]
  pools: [sales]
isolation:
  memory_sharing: false
"""


def test_a_policy_can_forbid_memory_sharing_for_the_pools_it_names(ctx, hv, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    pools.create(ctx, name="support", image="busybox-desktop", size=1, actor="t")
    policies.apply(ctx, {"private.yaml": PRIVATE_SALES}, actor="carol")
    settle(ctx)
    shared = {d.spec.pool: d.spec.share_memory for d in hv.domains.values()}
    assert shared == {"sales": False, "support": True}
    assert {k.shared for k in hv.saved} == {False, True}  # one template each: a clone inherits its XML


def test_a_new_image_gets_its_own_template_and_the_old_one_goes_with_its_last_desktop(ctx, hv, image):
    from controlplane.services import images as image_service

    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle(ctx)
    ctx.builder.variant = "v2"  # the next build gives other bytes: version 2
    newer = image_service.build(ctx, "busybox-desktop", actor="t")
    assert newer.id != image.id
    pools.update(ctx, "sales", size=None, min_size=None, max_size=None, groups=None, image="busybox-desktop:2",
                 actor="t")
    settle(ctx)
    assert {k.image_id for k in hv.saved} == {image.id, newer.id}  # old desktop still backed by the old one
    (row, _), = desktops.list_all(ctx)
    desktops.rebuild(ctx, row.name, actor="t")
    settle(ctx)
    assert {k.image_id for k in hv.saved} == {newer.id}
    (row, _), = desktops.list_all(ctx)
    assert row.image_id == newer.id and hv.domains[row.name].cloned
    assert "pool.image" in [e["action"] for e in audit_rows(ctx)]


def audit_rows(ctx):
    from controlplane.services import audit as audit_service
    return audit_service.recent(ctx, limit=200)


def test_a_clone_restored_after_a_long_wait_for_its_template_gets_its_full_identity_timeout(ctx, hv, image, clock):
    hv.boot_passes = 10_000  # the template boots slowly
    hv.silent_clones = True
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    settle_passes(ctx, 2)
    clock.advance(200)  # far longer than the identity timeout, spent waiting for the template
    hv.boot_passes = 0
    settle_passes(ctx, 3)
    (row, _), = desktops.list_all(ctx)
    assert hv.domains[row.name].cloned and str(row.state) == "provisioning"  # not failed at once


@pytest.mark.parametrize(("manifest", "first"), [
    ({"first_apps": ["firefox-esr"]}, frozenset({"firefox-esr"})),
    ({}, None),  # an image built before manifests said it: a clone is ready once it applies our list
    ({"first_apps": "firefox-esr"}, None),
    ({"first_apps": [1]}, None),
])
def test_a_desktop_knows_what_its_image_runs_before_the_first_allowlist(manifest, first):
    image = SimpleNamespace(disk_path="/d.qcow2", kernel_path="/k", initrd_path=None, cmdline="", id=1,
                            manifest={"readiness": "channel", **manifest})
    assert templates.boot_image(image).first_apps == first
