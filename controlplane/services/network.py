"""Desktop networking, orchestrated: each desktop's address comes from the database (one per
desktop and host, kept for the desktop's life) and the host network admits exactly the desktops
that have one. The reconciler syncs it every pass, so a crash anywhere converges: a port whose
desktop row is gone is refused, one that is missing is added back."""

from __future__ import annotations

import logging
import threading

from sqlalchemy.exc import IntegrityError

from controlplane.db import desktops
from controlplane.db.engine import session_scope
from controlplane.domain.network import DesktopNic
from controlplane.errors import TemporaryError
from controlplane.services.context import Context

log = logging.getLogger(__name__)


_assigning = threading.Lock()  # provisioning steps run in parallel: one picks an address at a time


def nic_for(ctx: Context, desktop_id: int) -> DesktopNic | None:
    """The desktop's NIC (its address assigned and committed now if it has none), or None without
    a host network or a desktop. Only desktops of this control plane's own host get one: the
    desktop network of another host is not driven from here yet, so its desktops have none.
    Raises AddressPoolExhausted when the subnet is full, and TemporaryError when another control
    plane took the same address at the same moment."""
    if ctx.network is None:
        return None
    net = ctx.network.network
    try:
        with _assigning, session_scope(ctx.engine) as session:
            row = desktops.get(session=session, desktop_id=desktop_id)
            if row is None or row.host_id != ctx.host_id:
                return None
            return net.nic(row.name, desktops.assign_address(session=session, desktop=row, network=net))
    except IntegrityError as err:
        raise TemporaryError("desktop address: taken by a concurrent assignment", delay=0.5) from err


def sync(ctx: Context) -> None:
    """Make the host admit exactly the desktops with an address. A host tool failing is logged
    and tried again next pass; desktops already admitted keep working meanwhile."""
    if ctx.network is None:
        return
    net = ctx.network.network
    with session_scope(ctx.engine) as session:
        addresses = desktops.addresses(session=session, host_id=ctx.host_id)
    try:
        ctx.network.sync([net.nic(name, ipv4) for name, ipv4 in addresses.items() if ipv4 in net.subnet])
    except TemporaryError as err:
        log.warning("desktop network not synced this pass: %s", err)
