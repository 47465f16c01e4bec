"""What the control plane measures, for Prometheus (GET /metrics, prometheus-client).

Two kinds of numbers:
- events measured where they happen, in this process: reconciler pass duration, provisioning
  latency (to ready), connect latency (entitlement to ticket), the shift scheduler's size
  changes, gateway bytes (counted when a display session ends), directory (LDAP) latency and
  errors;
- state read from the database at each scrape (StateCollector): desktops by pool, host and state,
  live display sessions, audit events written. Every replica reports the same state; dashboards
  take one replica's (or max) for those.

No label carries a user name, a desktop's address or a ticket: labels are pools, hosts, states,
directions and operations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.db import audit, desktops
from controlplane.db.engine import session_scope
from controlplane.domain.ports import Directory, Identity
from controlplane.errors import AuthFailed
from controlplane.services import rollouts, sessions
from controlplane.services.context import Context

T = TypeVar("T")

RECONCILE_PASS = Histogram("shiftdesk_reconcile_pass_seconds", "One reconciler pass: observe, plan, act",
                           buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
CONNECT = Histogram("shiftdesk_connect_seconds", "An agent's connect: entitlement, claim and ticket",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
PROVISIONING = Histogram("shiftdesk_provisioning_seconds", "A desktop's way to ready: boot, or instant-clone restore",
                         buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
SCALING = Counter("shiftdesk_scheduler_decisions", "Pool sizes the shift scheduler changed", ["direction"])
GATEWAY_BYTES = Counter("shiftdesk_gateway_bytes", "Bytes relayed by the gateway, counted as sessions end",
                        ["direction"])
DIRECTORY = Histogram("shiftdesk_directory_seconds", "Directory (LDAP) calls", ["operation"],
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
DIRECTORY_ERRORS = Counter("shiftdesk_directory_errors", "Directory (LDAP) calls that failed", ["operation"])


class StateCollector(Collector):
    """Reads the database at scrape time: what is, not what happened."""

    def __init__(self, ctx: Context, watchdog_period_s: float) -> None:
        self.ctx, self.period_s = ctx, watchdog_period_s

    def collect(self) -> Iterator[Metric]:
        with session_scope(self.ctx.engine) as session:
            placed = desktops.count_by_place(session=session)
            written = audit.total(session=session)
        live = sessions.live_count(self.ctx, self.period_s)
        latest = rollouts.overview(self.ctx)
        by_place = GaugeMetricFamily("shiftdesk_desktops", "Desktops by pool, host and state",
                                     labels=["pool", "host", "state"])
        for pool, host, state, n in placed:
            by_place.add_metric([pool, host, state], n)
        yield by_place
        yield GaugeMetricFamily("shiftdesk_live_sessions", "Open display sessions (as the reconciler counts them)",
                                value=live)
        yield CounterMetricFamily("shiftdesk_audit_events", "Audit events written (all time)", value=written)
        rollout = GaugeMetricFamily("shiftdesk_rollout_state", "Each pool's current or last image rollout, by state "
                                  "(canary, rolling, done, rolled_back): 1", labels=["pool", "state"])
        on = GaugeMetricFamily("shiftdesk_rollout_desktops", "Live desktops of a pool in a rollout, by version "
                               "(old, new)", labels=["pool", "version"])
        for r in latest:
            rollout.add_metric([r.pool, r.state.value], 1)
            if r.desktops is not None:
                for version, n in r.desktops.items():
                    on.add_metric([r.pool, version], n)
        yield rollout
        yield on


def exposition(ctx: Context, watchdog_period_s: float) -> bytes:
    """The Prometheus text format: this process's measurements, then the database's state
    (WATCHDOG_PERIOD_S: how often gateways send a live session's heartbeat)."""
    state = CollectorRegistry(auto_describe=False)
    state.register(StateCollector(ctx, watchdog_period_s))
    return generate_latest(REGISTRY) + generate_latest(state)


class MeasuredDirectory:
    """The directory port with every call timed, and its failures counted (a refused password is
    an answer, not a failure)."""

    def __init__(self, inner: Directory) -> None:
        self.inner = inner
        self.manages_computers = inner.manages_computers

    def _call(self, operation: str, call: Callable[[], T]) -> T:
        with DIRECTORY.labels(operation).time():
            try:
                return call()
            except AuthFailed:
                raise
            except Exception:
                DIRECTORY_ERRORS.labels(operation).inc()
                raise

    def authenticate(self, username: str, password: str) -> Identity:
        return self._call("authenticate", lambda: self.inner.authenticate(username, password))

    def lookup(self, username: str) -> Identity | None:
        return self._call("lookup", lambda: self.inner.lookup(username))

    def set_computer(self, desktop: str) -> str:
        return self._call("set_computer", lambda: self.inner.set_computer(desktop))

    def delete_computer(self, desktop: str) -> None:
        self._call("delete_computer", lambda: self.inner.delete_computer(desktop))

    def list_computers(self) -> set[str]:
        return self._call("list_computers", self.inner.list_computers)
