"""The collector pause around a reconcile pass (controlplane/heap.py)."""

from __future__ import annotations

import gc

import pytest

from controlplane.heap import collector_paused


@pytest.fixture(autouse=True)
def collector_restored():
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_the_collector_is_paused_in_the_block_and_runs_again_after_it_even_on_error():
    gc.enable()
    with pytest.raises(RuntimeError), collector_paused():
        assert not gc.isenabled()
        raise RuntimeError("a pass that failed")
    assert gc.isenabled()


def test_a_collector_someone_else_disabled_stays_disabled():
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()


def test_a_reconcile_pass_runs_with_the_collector_paused(ctx, image, monkeypatch):
    from controlplane.services import pools
    from controlplane.services.reconciler import Reconciler

    gc.enable()
    seen = []
    rec = Reconciler(ctx)
    observe = rec.observe
    monkeypatch.setattr(rec, "observe", lambda: (seen.append(gc.isenabled()), observe())[1])
    pools.create(ctx, name="sales", image="busybox-desktop", size=1, actor="t")
    rec.pass_once()
    rec.close()
    assert seen and not any(seen) and gc.isenabled()
