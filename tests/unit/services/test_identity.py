"""Signing in: the directory says who, ShiftDesk opens a session and audits it."""

from __future__ import annotations

from controlplane.services import audit, identity, pools
from tests.conftest import SALES, USERS
from tests.transactions import Transactions


def test_a_sign_in_is_one_unit_of_work_and_the_directory_is_asked_outside_it(ctx, image, directory):
    """The groups ShiftDesk names (pools, policies), the session row and its audit: one
    transaction (there were three), opened after the directory answered."""
    pools.create(ctx, name="sales", image="busybox-desktop", size=0, groups=[SALES], actor="t")
    asked_while_open: list[int] = []
    authenticate = directory.authenticate

    def counting(user, password):
        asked_while_open.append(probe.begun - probe.committed)
        return authenticate(user, password)

    directory.authenticate = counting
    with Transactions(ctx.engine) as probe:
        _, claims = identity.login(ctx, "alice", USERS["alice"][0], source="192.0.2.7")
    assert probe.begun == 1 and probe.committed == 1, probe.statements
    assert asked_while_open == [0]
    assert SALES in claims.groups
    (event,) = audit.recent(ctx, action="auth.login", limit=5)
    assert event["actor"] == "alice" and event["detail"]["source"] == "192.0.2.7"
