"""The host agent (`shiftdesk host-agent NAME`): runs on each libvirt host beside libvirtd and
proves the host alive, so that the control plane may give a dead host's desktops up safely.

It renews the host's lease (`host:NAME`) every third of its TTL. The control plane fences a host
(gives its desktops up and replaces them on other hosts) only when the host does not answer
*and* its lease ran out a further TTL ago (services/hosts.py). For no desktop ever to run on two
hosts, the agent fences its own host first: once it has gone a whole TTL without renewing the
lease (the database or the network is away, or the host is cut off from them), it powers off
every desktop of its host, a TTL before the control plane may act. This holds while the hosts'
clocks agree to better than a TTL (NTP keeps them within milliseconds).

The price: a database outage longer than the TTL stops every desktop of every host. Keep the
TTL (`SHIFTDESK_RECONCILER__HOST_LEASE_TTL_S`, 30 s) above the database's failover time.

With desktop networks on, the agent also keeps its host's desktop network (bridge, firewall, DHCP
server) admitting exactly the desktops of its host that have an address, every SYNC_S: the control
plane assigns the addresses, but only the host can open its own ports. Once the host is
registered (its row names its id) it calls ON_REGISTERED once, with the id: `shiftdesk host-agent`
starts the host's enforcing resolver there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from controlplane.db import hosts, leases
from controlplane.db.engine import session_scope
from controlplane.domain.ports import Clock, HostNetwork, Hypervisor
from controlplane.errors import ShiftDeskError
from controlplane.services import network

log = logging.getLogger(__name__)
PREFIX = "host:"


def lease_name(host: str) -> str:
    return f"{PREFIX}{host}"


SYNC_S = 2.0  # how often the host's desktop network is synced (a new desktop waits at most this)


class HostAgent:
    def __init__(self, engine: Engine, name: str, hypervisor: Hypervisor, clock: Clock,
                 ttl: timedelta = timedelta(seconds=30), network: HostNetwork | None = None,
                 on_registered: Callable[[int], None] | None = None) -> None:
        self.engine = engine
        self.name = name
        self.hypervisor = hypervisor
        self.clock = clock
        self.ttl = ttl
        self.network = network
        self.on_registered = on_registered
        self.host_id: int | None = None  # known once the host is registered
        self.renewed_at: datetime | None = None
        self.fenced = False  # it powered its desktops off since its last renewal

    def beat(self) -> bool:
        """Renew the lease; fence this host if it has gone a TTL without. True when renewed."""
        now = self.clock.now()
        try:
            with session_scope(self.engine) as session:
                renewed = leases.acquire(session=session, name=lease_name(self.name), holder=self.name, now=now,
                                         ttl=self.ttl) is not None
        except Exception as err:  # the database is away: exactly what the lease is for
            log.warning("host %s: lease not renewed: %s", self.name, err)
            renewed = False
        if renewed:
            if self.fenced:
                log.warning("host %s: lease renewed again after fencing", self.name)
            self.renewed_at, self.fenced = now, False
            return True
        if not self.fenced and (self.renewed_at is None or now - self.renewed_at >= self.ttl):
            self.fence()
        return False

    def fence(self) -> None:
        """Power off every desktop of this host: the control plane may soon replace them elsewhere."""
        try:
            names = sorted(self.hypervisor.list_desktops())
            for name in names:
                self.hypervisor.destroy(name)
        except ShiftDeskError as err:
            log.error("host %s: fencing itself failed (it is tried again): %s", self.name, err)
            return
        self.fenced = True
        log.error("host %s: lease not renewed for %s: fenced itself, %d desktops powered off", self.name,
                  self.ttl, len(names))

    def registered(self) -> int | None:
        """This host's id, looked up until the host is registered (then ON_REGISTERED runs once)."""
        if self.host_id is None:
            try:
                with session_scope(self.engine) as session:
                    row = hosts.get_by_name(session=session, name=self.name)
                    self.host_id = row.id if row is not None else None
            except Exception as err:  # the database is away: the lease's own problem
                log.warning("host %s: registration not looked up: %s", self.name, err)
            if self.host_id is not None and self.on_registered is not None:
                self.on_registered(self.host_id)
        return self.host_id

    def sync_network(self) -> None:
        """Admit exactly this host's desktops that have an address (nothing before registration)."""
        host_id = self.registered()
        if self.network is None or host_id is None:
            return
        try:
            network.sync_host(self.engine, self.network, host_id)
        except Exception as err:  # the database is away: the ports admitted stay as they are
            log.warning("host %s: desktop network not synced: %s", self.name, err)

    def run(self, stop: threading.Event) -> None:
        beat_every = self.ttl.total_seconds() / 3
        next_beat = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_beat:
                self.beat()
                next_beat = time.monotonic() + beat_every
            self.sync_network()
            stop.wait(min(SYNC_S, beat_every))
