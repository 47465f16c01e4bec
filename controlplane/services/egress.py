"""Egress, orchestrated: which names each desktop of this host may resolve (the effective policy
of the agent signed in to it, or of its pool while nobody is), and refusals into the audit log.

The resolver asks for a fresh `Allowlists` every second or so; building one is a couple of
queries and pure policy arithmetic, so a policy apply or a new sign-in is in force within
seconds, with no reboot and no message to the guest."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop
from controlplane.domain.egress import Refusal
from controlplane.services import policies
from controlplane.services.context import Context

ACTOR = "resolver"


@dataclass(frozen=True)
class DesktopEgress:
    name: str
    user: str | None
    domains: frozenset[str]  # policy rules: "crm.example.com", "*.example.com"
    policies: tuple[str, ...]  # the policies that decided it (for the audit trail)


Allowlists = dict[IPv4Address, DesktopEgress]


def allowlists(ctx: Context) -> Allowlists:
    """Every addressed desktop of this host, by address, with what it may resolve now."""
    return {IPv4Address(d.ipv4): DesktopEgress(d.name, d.user, d.domains, d.policies)
            for d in policies.on_desktops(ctx, Desktop.ipv4 != None)  # noqa: E711 - SQL IS NOT NULL
            if d.ipv4 is not None}


def record_refusals(ctx: Context, counted: list[tuple[Refusal, int]], dropped: int) -> None:
    """One audit event per distinct refusal of the period, with how often it happened."""
    if not counted and not dropped:
        return
    with session_scope(ctx.engine) as session:
        for refusal, count in counted:
            audit.append(session=session, actor=refusal.user or ACTOR, action="egress.refused",
                         target=refusal.desktop, name=refusal.name, rule=refusal.rule, count=count)
        if dropped:
            audit.append(session=session, actor=ACTOR, action="egress.refused_uncounted", target="*",
                         count=dropped, reason="more distinct refusals than the counter keeps")
