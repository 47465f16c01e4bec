"""Egress, orchestrated: which names each desktop of this host may resolve (the effective policy
of the agent signed in to it, or of its pool while nobody is), and refusals into the audit log.

The resolver asks for a fresh `Allowlists` every second or so; building one is a couple of
queries and pure policy arithmetic, so a policy apply or a new sign-in is in force within
seconds, with no reboot and no message to the guest."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address

from sqlmodel import select

from controlplane.db import audit
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, Pool
from controlplane.domain.egress import Refusal
from controlplane.domain.policy import effective, idle_domains
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
    rules = policies.active(ctx)
    with session_scope(ctx.engine) as session:
        rows = session.exec(select(Desktop, Pool).join(Pool).where(  # type: ignore[arg-type]
            Desktop.host_id == ctx.host_id, Desktop.ipv4 != None)).all()  # noqa: E711 - SQL IS NOT NULL
        found = [(d.name, d.ipv4, d.assigned_to, d.assigned_groups, p.name) for d, p in rows]
    result: Allowlists = {}
    for name, ipv4, user, groups, pool in found:
        if user is not None and groups is not None:
            eff = effective(rules, frozenset(groups), pool)
            result[IPv4Address(ipv4)] = DesktopEgress(name, user, eff.domains, eff.applied)
        else:
            naming = tuple(sorted(p.name for p in rules if pool in p.pools))
            result[IPv4Address(ipv4)] = DesktopEgress(name, None, idle_domains(rules, pool), naming)
    return result


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
