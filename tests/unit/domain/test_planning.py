from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.domain import planning as p
from controlplane.domain.desktop import ALLOWED
from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.placement import HostMode
from controlplane.domain.ports import HostCapacity, ObservedDomain

NOW = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def pool(target=2, min_size=0, max_size=10, deleting=False, id=1, name="sales"):
    return p.PoolView(id=id, name=name, target=target, min_size=min_size, max_size=max_size, deleting=deleting)


def desk(id, state=S.READY, pool_id=1, age=60, generation=1, host_id=1):
    return p.DesktopView(id=id, name=f"d{id}", pool_id=pool_id, state=state,
                         since=NOW - timedelta(seconds=age), host_id=host_id, generation=generation)


HOST = 1
ROOMY = HostCapacity(vcpus=64, memory_mib=1 << 20, disk_bytes=1 << 44, disk_free_bytes=1 << 43)


def on_host(domains, overlays, id=HOST, **kw):
    """The one host of most tests, answering with DOMAINS and OVERLAYS."""
    return [host(id, domains, overlays, **kw)]


def host(id, domains=None, overlays=(), mode=HostMode.ACTIVE, capacity=ROOMY, templates=(), down_reason=None,
         fenced=False):
    return p.HostView(id=id, name=f"h{id}", mode=mode, domains=domains, overlays=frozenset(overlays),
                      capacity=capacity, templates=frozenset(templates), down_reason=down_reason, fenced=fenced)


def dom(name, running=True, ready=True, pool="sales", generation=1):
    return ObservedDomain(name=name, pool=pool, desktop_id=0, running=running, ready=ready, generation=generation)


def kinds(plan):
    return [type(a).__name__ for a in plan.actions]


def of(plan, desktop_id):
    """The actions on one desktop (pool sizing may add others)."""
    return [a for a in plan.actions if getattr(a, "desktop_id", None) == desktop_id]


def test_empty_pool_grows_to_target():
    assert kinds(p.plan([pool(target=3)], [], on_host({}, set()), NOW)) == ["CreateDesktop"] * 3


def test_target_is_clamped_by_min_and_max():
    assert len(p.plan([pool(target=1, min_size=2)], [], on_host({}, set()), NOW).actions) == 2
    assert len(p.plan([pool(target=9, max_size=4)], [], on_host({}, set()), NOW).actions) == 4


def test_converged_pool_plans_nothing():
    desktops = [desk(1), desk(2)]
    out = p.plan([pool()], desktops, on_host({"d1": dom("d1"), "d2": dom("d2")}, {"d1", "d2"}), NOW)
    assert out.actions == [] and not out.pending


def test_provisioning_desktop_is_provisioned_then_marked_ready():
    d = desk(1, S.PROVISIONING, age=1)
    assert kinds(p.plan([pool(target=1)], [d], on_host({}, set()), NOW)) == ["Provision"]
    booting = p.plan([pool(target=1)], [d], on_host({"d1": dom("d1", ready=False)}, {"d1"}), NOW)
    assert booting.actions == [] and booting.pending
    assert kinds(p.plan([pool(target=1)], [d], on_host({"d1": dom("d1")}, {"d1"}), NOW)) == ["MarkReady"]


def test_boot_timeout_fails_the_desktop():
    d = desk(1, S.PROVISIONING, age=int(p.Limits().boot_timeout.total_seconds()) + 1)
    out = p.plan([pool(target=1)], [d], on_host({"d1": dom("d1", ready=False)}, {"d1"}), NOW)
    assert kinds(out) == ["MarkFailed"] and "not ready" in out.actions[0].reason


def test_failure_budget_stops_creation():
    failed = [desk(i, S.FAILED) for i in range(1, 4)]
    assert p.plan([pool(target=2)], failed, on_host({}, set()), NOW).actions == []


def test_shrink_deletes_booting_and_newest_first_and_drains_sessions_last():
    desktops = [desk(1, S.IN_USE, age=10), desk(2, S.READY, age=100), desk(3, S.READY, age=5),
                desk(4, S.PROVISIONING, age=1)]
    doms = {d.name: dom(d.name, ready=d.state != S.PROVISIONING) for d in desktops}
    overlays = set(doms)
    out = p.plan([pool(target=1)], desktops, on_host(doms, overlays), NOW)
    deletes = [a for a in out.actions if isinstance(a, (p.Delete, p.Drain))]
    assert deletes == [p.Delete(4), p.Delete(3), p.Delete(2)]
    out = p.plan([pool(target=0)], desktops, on_host(doms, overlays), NOW)
    assert p.Drain(1) in out.actions


def test_missing_domain_or_overlay_is_repaired_and_stopped_domain_started():
    assert kinds(p.plan([pool(target=1)], [desk(1)], on_host({}, {"d1"}), NOW)) == ["Repair"]
    assert kinds(p.plan([pool(target=1)], [desk(1)], on_host({"d1": dom("d1")}, set()), NOW)) == ["Repair"]
    stopped = {"d1": dom("d1", running=False, ready=False)}
    for state in (S.IN_USE, S.DRAINING):  # the agent's session: bring it back as it is
        assert of(p.plan([pool(target=1)], [desk(1, state)], on_host(stopped, {"d1"}), NOW), 1) == [p.StartDomain(1)]


def test_a_ready_desktop_that_is_not_running_is_not_ready_until_it_boots_again():
    stopped = {"d1": dom("d1", running=False, ready=False)}
    out = p.plan([pool(target=1)], [desk(1)], on_host(stopped, {"d1"}), NOW)
    assert out.actions == [p.Repair(1, "domain was not running")]


def test_vanished_domain_under_a_session_recycles_the_desktop():
    """The agent's work died with the domain: never re-provision their disk for someone else, never
    leave the desktop ready but assigned; recycle it (a reconnect gets a fresh one)."""
    for state in (S.IN_USE, S.DRAINING):
        out = of(p.plan([pool(target=1)], [desk(1, state)], on_host({}, {"d1"}), NOW), 1)
        assert out == [p.Recycle(1, "domain missing in libvirt")]
        out = of(p.plan([pool(target=1)], [desk(1, state)], on_host({"d1": dom("d1")}, set()), NOW), 1)
        assert out == [p.Recycle(1, "overlay missing in libvirt")]


def test_deleting_desktop_is_torn_down():
    assert kinds(p.plan([pool(target=0)], [desk(1, S.DELETING)], on_host({}, set()), NOW)) == ["Teardown"]


def test_deleting_pool_deletes_desktops_then_itself():
    out = p.plan([pool(deleting=True)], [desk(1), desk(2, S.IN_USE)], on_host({}, set()), NOW)
    assert p.Delete(1) in out.actions and p.Drain(2) in out.actions
    assert kinds(p.plan([pool(deleting=True)], [], on_host({}, set()), NOW)) == ["DropPool"]


def test_orphans_are_adopted_when_needed_else_removed():
    doms = {"x": dom("x"), "y": dom("y"), "z": dom("z", pool="gone")}
    out = p.plan([pool(target=1)], [], on_host(doms, {"x", "y", "z", "w"}), NOW)
    assert out.actions == [p.Adopt("x", 1, HOST), p.RemoveOrphan("y", HOST), p.RemoveOrphan("z", HOST),
                           p.RemoveOrphan("w", HOST)]


def test_adoption_counts_towards_size():
    out = p.plan([pool(target=2)], [], on_host({"x": dom("x")}, {"x"}), NOW)
    assert kinds(out) == ["Adopt", "CreateDesktop"]


def test_older_generation_is_recreated():
    d = desk(1, S.PROVISIONING, age=1, generation=2)
    out = p.plan([pool(target=1)], [d], on_host({"d1": dom("d1", generation=1)}, {"d1"}), NOW)
    assert kinds(out) == ["Recreate"]


def test_max_bounds_creation_including_failed():
    desktops = [desk(1, S.FAILED), desk(2, S.READY)]
    doms = {"d2": dom("d2")}
    out = p.plan([pool(target=3, max_size=3)], desktops, on_host(doms, {"d2"}), NOW)
    assert kinds(out) == ["CreateDesktop"]


def test_computer_accounts_follow_desktops():
    ready = {"d1": dom("d1")}
    assert kinds(p.plan([pool(target=1)], [desk(1)], on_host(ready, {"d1"}), NOW, computers={"d1"})) == []
    out = p.plan([pool(target=1)], [desk(1)], on_host(ready, {"d1"}), NOW, computers=set())
    assert kinds(out) == ["Repair"] and "computer account" in out.actions[0].reason
    booting = desk(1, S.PROVISIONING, age=1)
    assert kinds(p.plan([pool(target=1)], [booting], on_host({"d1": dom("d1", ready=False)}, {"d1"}), NOW,
                        computers=set())) == ["Recreate"]
    in_use = desk(1, S.IN_USE)
    assert kinds(p.plan([pool(target=1)], [in_use], on_host(ready, {"d1"}), NOW, computers=set())) == []
    out = p.plan([pool(target=0)], [], on_host({}, set()), NOW, computers={"stray"})
    assert out.actions == [p.RemoveOrphan("stray", None)]
    assert p.plan([pool(target=1)], [booting], on_host({}, set()), NOW).actions == [p.Provision(1, fresh=True)]
    stopped = {"d1": dom("d1", running=False, ready=False)}
    assert p.plan([pool(target=1)], [booting], on_host(stopped, {"d1"}), NOW).actions == [p.Provision(1, fresh=False)]


def test_grace_expiry_recycles_assigned_desktops():
    doms = {"d1": dom("d1")}
    later = NOW + timedelta(minutes=1)
    waiting = p.DesktopView(id=1, name="d1", pool_id=1, state=S.IN_USE, since=NOW, host_id=HOST,
                            grace_until=later)
    assert p.plan([pool(target=1)], [waiting], on_host(doms, {"d1"}), NOW).actions == []
    expired = p.DesktopView(id=1, name="d1", pool_id=1, state=S.IN_USE, since=NOW, host_id=HOST,
                            grace_until=NOW - timedelta(1))
    assert p.plan([pool(target=1)], [expired], on_host(doms, {"d1"}), NOW).actions == [p.Delete(1)]


def test_a_desktop_backing_off_is_left_alone_until_its_retry_time():
    waiting = p.DesktopView(id=1, name="d1", pool_id=1, state=S.PROVISIONING, since=NOW, host_id=HOST,
                            retry_at=NOW + timedelta(seconds=8))
    out = p.plan([pool(target=1)], [waiting], on_host({}, set()), NOW)
    assert out.actions == [] and out.pending and out.retry_at == NOW + timedelta(seconds=8)
    later = p.plan([pool(target=1)], [waiting], on_host({}, set()), NOW + timedelta(seconds=8))
    assert later.actions == [p.Provision(1, fresh=True)] and later.retry_at is None


def test_back_off_doubles_per_failure_and_is_capped():
    limits = p.Limits(max_retry_delay=timedelta(seconds=60))
    assert [p.backoff(2.0, n, limits).total_seconds() for n in range(1, 7)] == [2, 4, 8, 16, 32, 60]
    assert p.backoff(0.0, 1, limits) >= p.Limits().min_retry_delay  # never a hot loop


# --- the planner and the lifecycle hold together ------------------------------------------------

# Each action that moves a desktop, and where to; each action that acts in place, and where it may.
MOVES = {p.MarkReady: S.READY, p.MarkFailed: S.FAILED, p.Repair: S.PROVISIONING, p.Recycle: S.DELETING,
         p.Drain: S.DRAINING, p.Delete: S.DELETING, p.Evacuate: S.DELETING}
IN_PLACE = {p.Provision: {S.PROVISIONING}, p.Recreate: {S.PROVISIONING}, p.Teardown: {S.DELETING},
            p.StartDomain: {S.IN_USE, S.DRAINING}}

names = st.sampled_from(["d1", "d2", "d3", "d4", "x"])


@st.composite
def worlds(draw):
    pools = [pool(target=draw(st.integers(0, 4)), min_size=draw(st.integers(0, 2)), max_size=draw(st.integers(0, 5)),
                  deleting=draw(st.booleans()), id=i, name=f"p{i}") for i in (1, 2)]
    desktops = []
    for i in draw(st.sets(st.integers(1, 4))):
        grace = draw(st.sampled_from([None, NOW - timedelta(seconds=1), NOW + timedelta(seconds=60)]))
        desktops.append(p.DesktopView(id=i, name=f"d{i}", pool_id=draw(st.sampled_from([1, 2, 3])),
                                      state=draw(st.sampled_from(list(S))),
                                      since=NOW - timedelta(seconds=draw(st.integers(0, 600))),
                                      host_id=draw(st.sampled_from([1, 2])),
                                      generation=draw(st.integers(1, 2)), grace_until=grace))
    hosts = []
    for host_id in (1, 2):
        domains = {}
        for name in draw(st.sets(names)):
            running = draw(st.booleans())
            domains[name] = dom(name, running=running, ready=running and draw(st.booleans()),
                                pool=draw(st.sampled_from(["p1", "p2", "gone"])), generation=draw(st.integers(1, 2)))
        answers = host_id == 1 or draw(st.booleans())
        hosts.append(host(host_id, domains if answers else None, draw(st.sets(names)),
                          mode=draw(st.sampled_from(list(HostMode))), down_reason=None if answers else "gone",
                          fenced=not answers and draw(st.booleans())))
    computers = draw(st.one_of(st.none(), st.sets(names)))
    return pools, desktops, hosts, computers


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_every_planned_action_is_an_allowed_lifecycle_edge(world):
    pools, desktops, hosts, computers = world
    state = {d.id: d.state for d in desktops}
    for action in p.plan(pools, desktops, hosts, NOW, computers=computers).actions:
        if type(action) in MOVES:
            current, new = state[action.desktop_id], MOVES[type(action)]
            assert new != current, f"{action} leaves a {current} desktop where it is: it would loop"
            assert new in ALLOWED[current], f"{action}: {current} -> {new} is not a lifecycle edge"
        elif type(action) in IN_PLACE:
            assert state[action.desktop_id] in IN_PLACE[type(action)], f"{action} on a {state[action.desktop_id]}"
        else:
            assert not hasattr(action, "desktop_id"), f"{action}: map it to the state it moves the desktop to"


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_no_desktop_gets_two_actions_in_one_plan(world):
    """A pass performs its actions at once: two for one desktop (say the end of its agent's grace
    and the pool's shrinking) would race, and one of them fail."""
    pools, desktops, hosts, computers = world
    ids = [a.desktop_id for a in p.plan(pools, desktops, hosts, NOW, computers=computers).actions
           if hasattr(a, "desktop_id")]
    assert len(ids) == len(set(ids)), ids


def test_a_session_whose_grace_ended_is_deleted_once_while_its_pool_shrinks():
    doms = {"d1": dom("d1"), "d2": dom("d2")}
    expired = p.DesktopView(id=1, name="d1", pool_id=1, state=S.IN_USE, since=NOW, host_id=HOST,
                            grace_until=NOW - timedelta(1))
    idle = desk(2)
    actions = p.plan([pool(target=0)], [expired, idle], on_host(doms, {"d1", "d2"}), NOW).actions
    assert sorted(actions, key=str) == [p.Delete(1), p.Delete(2)]


# --- many hosts: each desktop is compared with its own host; placement picks where new ones go ---


def test_each_desktop_is_compared_with_its_own_host():
    d = desk(1, host_id=2)
    hosts = [host(1, {"d1": dom("d1")}, {"d1"}), host(2, {}, set())]
    out = p.plan([pool(target=1)], [d], hosts, NOW)
    assert out.actions == [p.Repair(1, "domain missing in libvirt"), p.RemoveOrphan("d1", 1)]


def test_a_copy_of_a_desktop_on_another_host_is_removed_never_adopted():
    hosts = [host(1, {"d1": dom("d1")}, {"d1"}), host(2, {"d1": dom("d1")}, {"d1"})]
    out = p.plan([pool(target=2)], [desk(1, host_id=2)], hosts, NOW)
    assert p.RemoveOrphan("d1", 1) in out.actions and not any(isinstance(a, p.Adopt) for a in out.actions)


def test_desktops_of_a_host_that_does_not_answer_are_left_alone_and_still_count():
    hosts = [host(1, {}, set()), host(2, None, down_reason="connection refused")]
    desktops = [desk(1, S.READY, host_id=2), desk(2, S.DELETING, host_id=2), desk(3, S.PROVISIONING, host_id=2)]
    out = p.plan([pool(target=2)], desktops, hosts, NOW, computers={"d1", "d2", "d3", "gone"})
    assert out.actions == [] and out.unobserved == 3  # no Repair, no Teardown, no top-up, no orphan removal


def test_new_desktops_spread_across_hosts_that_can_take_them():
    hosts = [host(1, {}, set()), host(2, {}, set()), host(3, {}, set(), mode=HostMode.MAINTENANCE),
             host(4, None, down_reason="timeout")]
    out = p.plan([pool(target=4)], [], hosts, NOW)
    assert [a.host_id for a in out.actions] == [1, 2, 1, 2] and out.unplaceable == {}


def test_a_pool_no_host_can_take_says_why():
    small = HostCapacity(vcpus=1, memory_mib=256, disk_bytes=1 << 40, disk_free_bytes=1 << 40)
    hosts = [host(1, {}, set(), capacity=small), host(2, {}, set(), mode=HostMode.MAINTENANCE)]
    sized = p.PoolView(id=1, name="sales", target=3, min_size=0, max_size=10, memory_mib=256, vcpus=1)
    out = p.plan([sized], [], hosts, NOW)
    assert kinds(out) == ["CreateDesktop"]  # one fits (256 MiB x 1.5); the second does not
    assert out.unplaceable[1] == ("pool sales: no host can take a desktop (256 MiB, 1 vCPU): h1: memory: 256 of "
                                  "384 MiB committed (256 MiB x 1.5), 256 MiB more needed; h2: in maintenance")


def test_idle_desktops_leave_a_host_in_maintenance_once_their_replacements_are_ready():
    leaving = [desk(1, S.READY, host_id=2), desk(2, S.PROVISIONING, host_id=2, age=1), desk(3, S.IN_USE, host_id=2)]
    doms = {"d1": dom("d1"), "d2": dom("d2", ready=False), "d3": dom("d3")}
    hosts = [host(1, {}, set()), host(2, doms, set(doms), mode=HostMode.MAINTENANCE)]
    first = p.plan([pool(target=3)], leaving, hosts, NOW)
    assert first.actions == [p.CreateDesktop(1, 1), p.CreateDesktop(1, 1)]  # replacements first
    replacements = [desk(4, S.READY, host_id=1), desk(5, S.PROVISIONING, host_id=1, age=1)]
    hosts[0] = host(1, {"d4": dom("d4"), "d5": dom("d5", ready=False)}, {"d4", "d5"})
    one_ready = p.plan([pool(target=3)], leaving + replacements, hosts, NOW)
    assert one_ready.actions == [p.Delete(2)]  # one ready to spare: the booting one goes first
    replacements[1] = desk(5, S.READY, host_id=1)
    hosts = [host(1, {"d4": dom("d4"), "d5": dom("d5")}, {"d4", "d5"}),
             host(2, {"d1": dom("d1"), "d3": dom("d3")}, {"d1", "d3"}, mode=HostMode.MAINTENANCE)]
    both_ready = p.plan([pool(target=3)], [leaving[0], leaving[2], *replacements], hosts, NOW)
    assert both_ready.actions == [p.Delete(1)]  # the agent's session on the host stays until it ends


def test_desktops_of_a_fenced_host_are_given_up_and_replaced_elsewhere():
    hosts = [host(1, {}, set()), host(2, None, down_reason="connection refused", fenced=True)]
    desktops = [desk(1, S.READY, host_id=2), desk(2, S.IN_USE, host_id=2), desk(3, S.DELETING, host_id=2)]
    out = p.plan([pool(target=2)], desktops, hosts, NOW, computers={"d1", "d2", "d3", "gone"})
    why = "host failed: h2 stopped answering and was fenced"
    assert out.actions == [p.Evacuate(1, why), p.Evacuate(2, why), p.Teardown(3, host_gone=True),
                           p.RemoveOrphan("gone", None)]
    given_up = [desk(1, S.DELETING, host_id=2), desk(2, S.DELETING, host_id=2)]
    out = p.plan([pool(target=2)], given_up, hosts, NOW)
    assert out.actions == [p.Teardown(1, host_gone=True), p.Teardown(2, host_gone=True),
                           p.CreateDesktop(1, 1), p.CreateDesktop(1, 1)]
