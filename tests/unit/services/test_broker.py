"""The broker: entitled claims, same desktop on reconnect, never two agents on one desktop,
tickets that are single-use, short-lived, bound to user and desktop, and stored hashed."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from controlplane.db.engine import session_scope
from controlplane.errors import Forbidden, TemporaryError
from controlplane.services import audit, broker, desktops, pools
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import Claims
from tests.conftest import SALES, SUPPORT
from tests.transactions import Transactions


def agent(name, *groups):
    return Claims(sub=name, role="agent", groups=tuple(groups), jti="x", exp=0)


ALICE, BOB = agent("alice", SALES), agent("bob", SALES)


@pytest.fixture(autouse=True)
def no_directory(ctx, request):
    """Most tests here use made-up agents the directory does not know: broker logic only."""
    if "with_directory" not in request.keywords:
        ctx.directory = None


@pytest.fixture
def ready_pool(ctx, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=3, groups=[SALES], actor="t")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()


def test_connect_assigns_and_reconnect_returns_the_same_desktop(ctx, ready_pool):
    first = broker.connect(ctx, ALICE, "sales")
    again = broker.connect(ctx, ALICE, "sales")
    assert first.desktop == again.desktop and first.ticket != again.ticket
    assert broker.connect(ctx, BOB, "sales").desktop != first.desktop
    row, _ = desktops.get(ctx, first.desktop)
    assert row.state == "in_use" and row.assigned_to == "alice"
    assert row.assigned_groups == sorted(ALICE.groups)  # the resolver applies alice's allowlist to it


def test_not_entitled_and_exhausted_pools(ctx, ready_pool):
    with pytest.raises(Forbidden):
        broker.connect(ctx, agent("eve", SUPPORT), "sales")
    for i in range(3):
        broker.connect(ctx, agent(f"a{i}", SALES), "sales")
    with pytest.raises(TemporaryError, match="no desktop is ready"):
        broker.connect(ctx, agent("late", SALES), "sales")


def test_simultaneous_clicks_never_share_a_desktop(ctx, image):
    pools.create(ctx, name="sales", image="busybox-desktop", size=8, groups=[SALES], actor="t")
    rec = Reconciler(ctx)
    assert rec.run_until_converged(timeout=10, busy_period=0)
    rec.close()
    results, barrier = {}, threading.Barrier(16)

    def click(i):
        barrier.wait()
        try:
            results[i] = broker.connect(ctx, agent(f"u{i}", SALES), "sales").desktop
        except TemporaryError:
            results[i] = None

    threads = [threading.Thread(target=click, args=(i,)) for i in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    given = [d for d in results.values() if d]
    assert len(given) == 8 and len(set(given)) == 8


def test_tickets_single_use_short_lived_user_bound_and_hashed(ctx, clock, ready_pool):
    c = broker.connect(ctx, ALICE, "sales")
    assert len(c.ticket) >= 43  # 256 bits, base64url
    with session_scope(ctx.engine) as session:
        stored = session.execute(text("SELECT digest FROM connect_tickets")).scalars().all()
    assert c.ticket not in stored and broker.digest(c.ticket) in stored
    with pytest.raises(broker.TicketRefused, match="connect ticket refused"):
        broker.redeem(ctx, c.ticket, "bob")  # another user's ticket: refused (and burnt)
    c = broker.connect(ctx, ALICE, "sales")
    target = broker.redeem(ctx, c.ticket, "alice")
    assert target.desktop == c.desktop and target.username == "alice"
    with pytest.raises(broker.TicketRefused):
        broker.redeem(ctx, c.ticket, "alice")  # replay
    late = broker.connect(ctx, ALICE, "sales")
    clock.advance(ctx.ticket_ttl_s + 1)
    with pytest.raises(broker.TicketRefused):
        broker.redeem(ctx, late.ticket, "alice")  # expired
    with pytest.raises(broker.TicketRefused):
        broker.redeem(ctx, "A" * 43, "alice")  # guessed


def test_release_recycles_so_the_next_agent_never_gets_an_open_session(ctx, ready_pool):
    c = broker.connect(ctx, ALICE, "sales")
    broker.release(ctx, c.desktop, actor="carol")
    row = desktops.get(ctx, c.desktop)[0]
    assert row.state == "deleting" and row.assigned_to is None
    assert broker.connect(ctx, BOB, "sales").desktop != c.desktop


def test_release_keeping_the_desktop_for_its_agent_only_ends_the_live_session(ctx, ready_pool):
    c = broker.connect(ctx, ALICE, "sales")
    broker.release(ctx, c.desktop, actor="carol", keep_for_user=True)
    row = desktops.get(ctx, c.desktop)[0]
    assert row.state == "in_use" and row.assigned_to == "alice" and row.disconnect_requested
    assert broker.connect(ctx, ALICE, "sales").desktop == c.desktop
    assert broker.connect(ctx, BOB, "sales").desktop != c.desktop


def test_connect_is_one_transaction_claim_ticket_and_grace(ctx, ready_pool):
    def crash(point):
        if point == "broker.connect":
            raise RuntimeError("power cut")

    ctx.crashpoint = crash
    with pytest.raises(RuntimeError):
        broker.connect(ctx, ALICE, "sales")
    assert {d.state for d, _ in desktops.list_all(ctx)} == {"ready"}  # nothing claimed, nothing stranded
    ctx.crashpoint = lambda point: None
    c = broker.connect(ctx, ALICE, "sales")
    row = desktops.get(ctx, c.desktop)[0]
    assert row.state == "in_use" and row.grace_until is not None  # recycled if the ticket is never used


@pytest.mark.with_directory
def test_a_connect_is_one_unit_of_work_and_the_directory_is_asked_outside_it(ctx, ready_pool, directory):
    """Entitlement, the directory's verdict, the session rules, the claim and the ticket: one
    transaction (each opened its own: four per connect). The directory is asked while none is
    open, so a slow directory holds no database connection. The pools are read once, for both
    the entitlement and the directory's verdict (and the pool is not read again after the claim
    expires the session's objects)."""
    asked_while_open: list[int] = []
    lookup = directory.lookup

    def counting_lookup(user):
        asked_while_open.append(probe.begun - probe.committed)
        return lookup(user)

    directory.lookup = counting_lookup
    with Transactions(ctx.engine) as probe:
        broker.connect(ctx, ALICE, "sales")
    assert probe.begun == 1 and probe.committed == 1
    assert asked_while_open == [0]
    pool_reads = probe.matching(r"\bFROM pools\b")
    assert len(pool_reads) == 1, pool_reads


def test_a_ticket_shown_by_another_user_is_burnt_and_the_refusal_audited(ctx, ready_pool):
    """A ticket that reached someone else is spent: its owner clicks Connect again. The refusal
    names both users (it was rolled back with the refusal, so neither happened)."""
    c = broker.connect(ctx, ALICE, "sales")
    with pytest.raises(broker.TicketRefused):
        broker.redeem(ctx, c.ticket, "bob")
    with pytest.raises(broker.TicketRefused):
        broker.redeem(ctx, c.ticket, "alice")
    refusals = [(e["actor"], e["target"], e["detail"]["reason"])
                for e in audit.recent(ctx, action="session.ticket_refused", limit=5)]
    assert refusals == [("gateway", "?", "unknown, used or expired"), ("bob", "alice", "ticket of another user")]
