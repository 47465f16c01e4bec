"""Desktop networking, orchestrated: each desktop's address comes from the database (one per
desktop and host, kept for the desktop's life) and each host's network admits exactly the
desktops of that host that have one. The control plane's own host is synced by the reconciler
every pass; every other host by its host agent every few seconds (services/host_agent.py), since
its bridge, firewall and DHCP server are on that host. Either way a crash anywhere converges: a
port whose desktop row is gone is refused, one that is missing is added back."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from controlplane.db import desktops
from controlplane.db.engine import session_scope
from controlplane.domain.network import DesktopNic
from controlplane.domain.ports import HostNetwork
from controlplane.errors import TemporaryError
from controlplane.services.context import Context

log = logging.getLogger(__name__)


_assigning = threading.Lock()  # provisioning steps run in parallel: one picks an address at a time


def nic_for(ctx: Context, desktop_id: int) -> DesktopNic | None:
    """The desktop's NIC (its address on its host's desktop network, assigned and committed now if
    it has none), or None without desktop networks or a desktop. Every host's desktop network has
    the same shape (one subnet per host, addresses unique per host). Raises AddressPoolExhausted
    when the subnet is full, and TemporaryError when another control plane took the same address
    at the same moment."""
    if ctx.network is None:
        return None
    net = ctx.network.network
    try:
        with _assigning, session_scope(ctx.engine) as session:
            row = desktops.get(session=session, desktop_id=desktop_id)
            if row is None:
                return None
            return net.nic(row.name, desktops.assign_address(session=session, desktop=row, network=net))
    except IntegrityError as err:
        raise TemporaryError("desktop address: taken by a concurrent assignment", delay=0.5) from err


def sync(ctx: Context) -> None:
    """Make this control plane's own host admit exactly its desktops with an address."""
    if ctx.network is not None:
        sync_host(ctx.engine, ctx.network, ctx.host_id)


def sync_host(engine: Engine, host_network: HostNetwork, host_id: int) -> None:
    """Make HOST_NETWORK (the network of host HOST_ID, on that host) admit exactly that host's
    desktops with an address. A host tool failing is logged and tried again next time; desktops
    already admitted keep working meanwhile."""
    net = host_network.network
    with session_scope(engine) as session:
        addresses = desktops.addresses(session=session, host_id=host_id)
    try:
        host_network.sync([net.nic(name, ipv4) for name, ipv4 in addresses.items() if ipv4 in net.subnet])
    except TemporaryError as err:
        log.warning("desktop network not synced this time: %s", err)
