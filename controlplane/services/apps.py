"""App allowlists, orchestrated: which apps each desktop of this host may run, signed and sent to
its in-guest enforcer every reconciler pass, and the executions the guests denied into the audit
log.

What a desktop may run follows who is on it, as its egress does (services/egress.py): the
effective policy of the agent signed in, or while nobody is, what every policy naming its pool
allows. A policy apply or a sign-in changes the list; the next pass (two seconds) signs a new
revision and sends it; a desktop is ready for an agent only once its guest applies the list it was
sent, and one that refuses it or does not apply it in time is quarantined and recycled
(drivers/libvirt/guest_link.py). The enforcer itself is Debian's fapolicyd in the image, set by
`apply-apps` (images/recipes/agent-desktop).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop
from controlplane.domain.app_policy import sign
from controlplane.domain.desktop import DesktopState as S
from controlplane.services import policies
from controlplane.services.context import Context
from controlplane.services.tokens import load_or_create_key

ACTOR = "guest"  # who denied an execution nobody was signed in for
DELIVER_TO = (S.PROVISIONING, S.READY, S.IN_USE, S.DRAINING)  # desktops whose guest may run


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The control plane's app-allowlist signing key: 32 random bytes, created once, 0600."""
    return Ed25519PrivateKey.from_private_bytes(load_or_create_key(path)[:32])


def wanted(ctx: Context) -> dict[str, frozenset[str]]:
    """Each running desktop of this host -> the apps it may run now."""
    return {d.name: d.apps for d in policies.on_desktops(ctx, Desktop.state.in_(DELIVER_TO))}  # type: ignore[attr-defined]


def sync(ctx: Context) -> None:
    """Send every desktop the allowlist it should enforce now; audit what guests denied."""
    if ctx.app_signer is None:
        return
    signer = partial(sign, ctx.app_signer)
    now_ms = int(ctx.clock.now().timestamp() * 1000)
    lists = wanted(ctx)
    for name, apps in lists.items():
        signed = ctx.app_revisions.current(name, apps, now_ms, signer)
        ctx.hypervisor.deliver_apps(name, signed)
    ctx.app_revisions.keep_only(set(lists))
    record_denials(ctx)


def record_denials(ctx: Context) -> None:
    """One audit event per desktop and path the guests reported, with the user signed in to it."""
    denials = ctx.hypervisor.app_denials()
    if not denials:
        return
    with session_scope(ctx.engine) as session:
        users = dict(session.exec(select(Desktop.name, Desktop.assigned_to).where(  # type: ignore[call-overload]
            Desktop.name.in_({d.desktop for d in denials}))).all())  # type: ignore[attr-defined]
        for denial in denials:
            audit.append(session=session, actor=users.get(denial.desktop) or ACTOR, action="app.denied",
                         target=denial.desktop, path=denial.path, count=denial.count,
                         rule="not in apps.allow")
