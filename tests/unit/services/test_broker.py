"""The broker: entitled claims, same desktop on reconnect, never two agents on one desktop,
tickets that are single-use, short-lived, bound to user and desktop, and stored hashed."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from controlplane.db.engine import session_scope
from controlplane.errors import Forbidden, TemporaryError
from controlplane.services import broker, desktops, pools
from controlplane.services.reconciler import Reconciler
from controlplane.services.tokens import Claims
from tests.conftest import SALES, SUPPORT


def agent(name, *groups):
    return Claims(sub=name, role="agent", groups=tuple(groups), jti="x", exp=0)


ALICE, BOB = agent("alice", SALES), agent("bob", SALES)


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


def test_release_returns_or_recycles(ctx, ready_pool):
    c = broker.connect(ctx, ALICE, "sales")
    broker.release(ctx, c.desktop, actor="carol")
    assert desktops.get(ctx, c.desktop)[0].state == "ready"
    c = broker.connect(ctx, BOB, "sales")
    broker.release(ctx, c.desktop, actor="carol", recycle=True)
    assert desktops.get(ctx, c.desktop)[0].state == "deleting"
