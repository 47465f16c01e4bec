"""Display sessions across replicas: the per-agent cap is counted in the database."""

from __future__ import annotations

import threading

from controlplane.db import display_sessions
from controlplane.db.engine import session_scope
from controlplane.services import audit, sessions

LIMITS = sessions.Limits(idle_s=900, max_s=3600, grace_s=300)


def test_an_agent_racing_many_connects_through_many_replicas_gets_only_the_cap(ctx):
    """Eight connects at once (as from eight gateways on different replicas, each its own
    transaction): exactly CAP open, the rest are refused and leave nothing behind."""
    cap, tries = 2, 8
    start = threading.Barrier(tries)
    opened: list[sessions.Display] = []
    refused: list[sessions.CapReached] = []

    def connect(i: int) -> None:
        start.wait()
        try:
            opened.append(sessions.open_display(ctx, desktop_id=100 + i, user="alice", jti="j", source="t",
                                                gateway=f"replica-{i % 2}", limits=LIMITS, period_s=2, cap=cap))
        except sessions.CapReached as err:
            refused.append(err)

    threads = [threading.Thread(target=connect, args=(i,)) for i in range(tries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(opened) == cap and len(refused) == tries - cap
    assert refused[0].field == "user" and "2 live display sessions" in str(refused[0])
    with session_scope(ctx.engine) as session:
        assert display_sessions.count_user(session=session, user="alice") == cap
    assert len(audit.recent(ctx, action="session.start", limit=50)) == cap


def test_sessions_whose_gateway_died_do_not_count_towards_the_cap(ctx, clock):
    for i in range(2):
        sessions.open_display(ctx, desktop_id=i, user="alice", jti="j", source="t", gateway="dead",
                              limits=LIMITS, period_s=2, cap=2)
    clock.advance(7)  # three missed heartbeats of a 2 s period: that gateway is gone
    display = sessions.open_display(ctx, desktop_id=9, user="alice", jti="j", source="t", gateway="alive",
                                    limits=LIMITS, period_s=2, cap=2)
    assert display.desktop_id == 9
    sessions.open_display(ctx, desktop_id=10, user="bob", jti="k", source="t", gateway="alive", limits=LIMITS,
                          period_s=2, cap=1)  # another agent's cap is their own
