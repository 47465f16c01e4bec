"""Which apps each desktop may run (its agent's effective policy, or its pool's while nobody is
signed in), signed and delivered every pass, a new revision only when the list changes; denials
the guests report are audited with the user signed in."""

from __future__ import annotations

from sqlmodel import select

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain.app_policy import public_bytes, verify
from controlplane.domain.ports import AppDenial, DesktopSpec
from controlplane.drivers.fake import FakeDomain
from controlplane.services import apps, observation, policies, pools
from tests.conftest import SALES, SUPPORT

FILES = {
    "sales.yaml": f'name: sales\nbind:\n  groups: ["{SALES}"]\n  pools: [floor]\n'
                  'apps:\n  allow: [firefox-esr, mousepad]\n',
    "support.yaml": f'name: support\nbind:\n  groups: ["{SUPPORT}"]\n  pools: [floor]\n'
                    'apps:\n  allow: [firefox-esr, galculator]\n',
}


def add_desktop(ctx, image, name, user=None, groups=None, state=None, host=None):
    """A desktop row and its running fake domain, on this host or on HOST (a host id, hypervisor)."""
    host_id, hv = host or (ctx.host_id, ctx.hypervisor)
    with session_scope(ctx.engine) as session:
        pool = session.exec(select(Pool).where(Pool.name == "floor")).one()
        session.add(Desktop(name=name, pool_id=pool.id, host_id=host_id, image_id=image.id,
                            state=state or ("in_use" if user else "ready"), assigned_to=user, assigned_groups=groups))
    spec = DesktopSpec(name=name, pool="floor", desktop_id=0, image=None)  # type: ignore[arg-type]
    hv.domains[name] = FakeDomain(spec, running=True)


def delivered(ctx, name):
    signed = ctx.hypervisor.apps[name]
    return verify(public_bytes(ctx.app_signer), signed.document, signed.signature)


def test_each_desktop_is_sent_its_agents_apps_or_its_pools(ctx, image):
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, FILES, actor="admin")
    add_desktop(ctx, image, "sd-unit-floor-000001", "alice", [SALES])
    add_desktop(ctx, image, "sd-unit-floor-000002", "bob", [SUPPORT])
    add_desktop(ctx, image, "sd-unit-floor-000003")
    add_desktop(ctx, image, "sd-unit-floor-000004", state="deleting")  # on its way out: nothing sent
    apps.sync(ctx)
    assert delivered(ctx, "sd-unit-floor-000001").apps == ("firefox-esr", "mousepad")
    assert delivered(ctx, "sd-unit-floor-000002").apps == ("firefox-esr", "galculator")
    assert delivered(ctx, "sd-unit-floor-000003").apps == ("firefox-esr",)  # what both policies allow
    assert delivered(ctx, "sd-unit-floor-000001").desktop == "sd-unit-floor-000001"
    assert "sd-unit-floor-000004" not in ctx.hypervisor.apps


def test_a_reconcile_pass_sends_from_its_own_look_what_the_database_says(ctx, image):
    """The reconciler sends lists from the desktop rows its observation read (one read of every
    desktop a pass, not two): the same lists, for the same desktops, as read afresh."""
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, FILES, actor="admin")
    add_desktop(ctx, image, "sd-unit-floor-000001", "alice", [SALES])
    add_desktop(ctx, image, "sd-unit-floor-000002", "bob", [SUPPORT])
    add_desktop(ctx, image, "sd-unit-floor-000003")
    add_desktop(ctx, image, "sd-unit-floor-000004", "carol", [SALES, SUPPORT], state="draining")
    add_desktop(ctx, image, "sd-unit-floor-000005", state="deleting")
    seen = observation.observe(ctx)
    assert apps.wanted(ctx, seen.occupancy) == apps.wanted(ctx)
    assert set(apps.wanted(ctx)[ctx.host_id]) == {f"sd-unit-floor-00000{i}" for i in range(1, 5)}


def test_a_policy_apply_sends_a_higher_revision_and_an_unchanged_list_is_not_resent(ctx, image, clock):
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, FILES, actor="admin")
    add_desktop(ctx, image, "sd-unit-floor-000001", "alice", [SALES])
    apps.sync(ctx)
    first = delivered(ctx, "sd-unit-floor-000001")
    clock.advance(2)
    apps.sync(ctx)
    assert ctx.hypervisor.calls.count(("deliver_apps", "sd-unit-floor-000001")) == 1
    policies.apply(ctx, {**FILES, "sales.yaml": FILES["sales.yaml"].replace(", mousepad", "")}, actor="admin")
    apps.sync(ctx)
    second = delivered(ctx, "sd-unit-floor-000001")
    assert second.apps == ("firefox-esr",) and second.revision > first.revision


def test_denials_are_audited_with_the_user_signed_in(ctx, image):
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    add_desktop(ctx, image, "sd-unit-floor-000001", "alice", [SALES])
    add_desktop(ctx, image, "sd-unit-floor-000002")
    ctx.hypervisor.denials = [AppDenial("sd-unit-floor-000001", "/usr/bin/galculator", 3),
                              AppDenial("sd-unit-floor-000002", "/home/agent/x", 1)]
    apps.sync(ctx)
    apps.sync(ctx)  # drained: not audited twice
    with session_scope(ctx.engine) as session:
        events = [e for e in audit.list_recent(session=session, limit=20) if e.action == "app.denied"]
    assert sorted((e.actor, e.target, e.detail["path"], e.detail["count"]) for e in events) == [
        ("alice", "sd-unit-floor-000001", "/usr/bin/galculator", 3),
        ("guest", "sd-unit-floor-000002", "/home/agent/x", 1)]


def test_desktops_of_other_hosts_get_their_lists_through_their_hosts_driver(ctx, image, fleet):
    fakes, ids = fleet
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, FILES, actor="admin")
    add_desktop(ctx, image, "sd-unit-floor-00000b", "alice", [SALES], host=(ids["b"], fakes["b"]))
    add_desktop(ctx, image, "sd-unit-floor-00000c", host=(ids["c"], fakes["c"]))
    fakes["c"].unreachable = True  # its guests keep what they have; the others still get theirs
    add_desktop(ctx, image, "sd-unit-floor-000001")
    fakes["b"].denials.append(AppDenial("sd-unit-floor-00000b", "/usr/bin/xterm", 2))
    apps.sync(ctx)
    signed = fakes["b"].apps["sd-unit-floor-00000b"]
    assert verify(public_bytes(ctx.app_signer), signed.document, signed.signature).apps == ("firefox-esr", "mousepad")
    assert delivered(ctx, "sd-unit-floor-000001").apps == ("firefox-esr",)
    assert "sd-unit-floor-00000b" not in ctx.hypervisor.apps and fakes["c"].apps == {}
    with session_scope(ctx.engine) as session:
        (denied,) = [e for e in audit.list_recent(session=session, limit=20) if e.action == "app.denied"]
    assert (denied.actor, denied.target, denied.detail["path"]) == ("alice", "sd-unit-floor-00000b", "/usr/bin/xterm")
