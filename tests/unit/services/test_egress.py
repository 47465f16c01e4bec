"""Which names each desktop may resolve: its agent's effective policy while someone is signed
in (from the groups their sign-in carried), its pool's while nobody is; refusals audited once
per distinct refusal with a count."""

from __future__ import annotations

from ipaddress import IPv4Address

from sqlmodel import select

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain.egress import Refusal
from controlplane.services import egress, policies, pools
from tests.conftest import SALES, SUPPORT

FILES = {
    "sales.yaml": f'name: sales\nbind:\n  groups: ["{SALES}"]\n  pools: [floor]\n'
                  'domains:\n  allow: ["crm.example.com", "kb.example.com"]\n',
    "support.yaml": f'name: support\nbind:\n  groups: ["{SUPPORT}"]\n  pools: [floor]\n'
                    'domains:\n  allow: ["kb.example.com", "tickets.example.com"]\n',
}


def add_desktop(ctx, image, name, ipv4, user=None, groups=None, host_id=None):
    with session_scope(ctx.engine) as session:
        pool = session.exec(select(Pool).where(Pool.name == "floor")).one()
        session.add(Desktop(name=name, pool_id=pool.id, host_id=host_id or ctx.host_id, image_id=image.id,
                            state="in_use" if user else "ready", assigned_to=user, assigned_groups=groups,
                            ipv4=ipv4))


def test_each_desktop_follows_its_agent_or_its_pool(ctx, image):
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, FILES, actor="admin")
    add_desktop(ctx, image, "sd-unit-floor-000001", "10.213.0.10", "alice", [SALES])
    add_desktop(ctx, image, "sd-unit-floor-000002", "10.213.0.11", "bob", [SUPPORT])
    add_desktop(ctx, image, "sd-unit-floor-000003", "10.213.0.12")
    add_desktop(ctx, image, "sd-unit-floor-000004", None)  # no network: not resolvable at all
    lists = egress.allowlists(ctx)
    assert set(lists) == {IPv4Address(f"10.213.0.{i}") for i in (10, 11, 12)}
    alice, bob, idle = (lists[IPv4Address(f"10.213.0.{i}")] for i in (10, 11, 12))
    assert (alice.user, alice.domains) == ("alice", {"crm.example.com", "kb.example.com"})
    assert (bob.user, bob.domains) == ("bob", {"kb.example.com", "tickets.example.com"})
    assert (idle.user, idle.domains, idle.policies) == (None, {"kb.example.com"}, ("sales", "support"))


def test_a_policy_apply_changes_the_allowlists_at_once(ctx, image):
    pools.create(ctx, name="floor", image="busybox-desktop", size=0, actor="t")
    policies.apply(ctx, FILES, actor="admin")
    add_desktop(ctx, image, "sd-unit-floor-000001", "10.213.0.10", "alice", [SALES])
    narrower = {**FILES, "sales.yaml": FILES["sales.yaml"].replace('"crm.example.com", ', "")}
    policies.apply(ctx, narrower, actor="admin")
    assert egress.allowlists(ctx)[IPv4Address("10.213.0.10")].domains == {"kb.example.com"}


def test_refusals_become_one_audit_event_each_with_its_count(ctx):
    refusal = Refusal("sd-unit-floor-000001", "alice", "tracker.example.org", "no rule of the policy covers it")
    egress.record_refusals(ctx, [(refusal, 41)], dropped=3)
    egress.record_refusals(ctx, [], dropped=0)
    with session_scope(ctx.engine) as session:
        events = [e for e in audit.list_recent(session=session, limit=10) if e.action.startswith("egress.")]
    assert [(e.action, e.actor, e.target, e.detail.get("count")) for e in events] == [
        ("egress.refused_uncounted", "resolver", "*", 3),
        ("egress.refused", "alice", "sd-unit-floor-000001", 41)]
    assert events[1].detail["name"] == "tracker.example.org"
