"""App allowlists, orchestrated: which apps each desktop of this host may run, signed and sent to
its in-guest enforcer every reconciler pass, and the executions the guests denied into the audit
log.

What a desktop may run follows who is on it, as its egress does (services/egress.py): the
effective policy of the agent signed in, or while nobody is, what every policy naming its pool
allows. A policy apply or a sign-in changes the list; the next pass (two seconds) signs a new
revision and sends it; a desktop is ready for an agent only once its guest runs nothing beyond
the list it was sent (it applies that list, or a clone still runs its image's first list and that
is within it), and one that refuses it or does not apply it in time is quarantined and recycled
(drivers/libvirt/guest_link.py). The enforcer itself is Debian's fapolicyd in the image, set by
`apply-apps` (images/recipes/agent-desktop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop
from controlplane.domain.app_policy import sign
from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.ports import AppDenial
from controlplane.errors import TemporaryError
from controlplane.services import policies
from controlplane.services.context import Context
from controlplane.services.tokens import load_or_create_key

log = logging.getLogger(__name__)
ACTOR = "guest"  # who denied an execution nobody was signed in for
DELIVER_TO = (S.PROVISIONING, S.READY, S.IN_USE, S.DRAINING)  # desktops whose guest may run


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The control plane's app-allowlist signing key: 32 random bytes, created once, 0600."""
    return Ed25519PrivateKey.from_private_bytes(load_or_create_key(path)[:32])


def wanted(ctx: Context, occupancy: Iterable[policies.Occupancy] | None = None) -> dict[int, dict[str, frozenset[str]]]:
    """Each host -> its running desktops -> the apps each may run now. From OCCUPANCY (those
    desktops, as a reconcile pass read them) when given, else from the database."""
    desktops = (policies.on_desktops(ctx, Desktop.state.in_(DELIVER_TO), every_host=True)  # type: ignore[attr-defined]
                if occupancy is None else policies.rules_on(policies.active(ctx), occupancy))
    lists: dict[int, dict[str, frozenset[str]]] = {}
    for d in desktops:
        lists.setdefault(d.host_id, {})[d.name] = d.apps
    return lists


def sync(ctx: Context, occupancy: Iterable[policies.Occupancy] | None = None) -> None:
    """Send every desktop, on every host, the allowlist it should enforce now (through its host's
    driver: another host's guests are reached through that host's console relay); audit what
    guests denied. A host that cannot be driven now is skipped: its guests keep what they have.
    OCCUPANCY: the running desktops as a reconcile pass just read them (`wanted`)."""
    if ctx.app_signer is None:
        return
    signer = partial(sign, ctx.app_signer)
    now_ms = int(ctx.clock.now().timestamp() * 1000)
    lists = wanted(ctx, occupancy)
    denials: list[AppDenial] = []
    for host_id in {ctx.host_id, *lists}:
        try:
            hv = ctx.driver(host_id)
            for name, apps in lists.get(host_id, {}).items():
                hv.deliver_apps(name, ctx.app_revisions.current(name, apps, now_ms, signer))
            denials += hv.app_denials()
        except TemporaryError as err:
            log.info("app allowlists of host %d not delivered this pass: %s", host_id, err)
    ctx.app_revisions.keep_only({name for desktops in lists.values() for name in desktops})
    record_denials(ctx, denials)


def record_denials(ctx: Context, denials: list[AppDenial]) -> None:
    """One audit event per desktop and path the guests reported, with the user signed in to it."""
    if not denials:
        return
    with session_scope(ctx.engine) as session:
        users = dict(session.exec(select(Desktop.name, Desktop.assigned_to).where(  # type: ignore[call-overload]
            Desktop.name.in_({d.desktop for d in denials}))).all())  # type: ignore[attr-defined]
        for denial in denials:
            audit.append(session=session, actor=users.get(denial.desktop) or ACTOR, action="app.denied",
                         target=denial.desktop, path=denial.path, count=denial.count,
                         rule="not in apps.allow")
