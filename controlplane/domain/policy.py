"""Desktop policies and the one function that says which rules apply to a (user, desktop).

Precedence (documented in policies/README.md): every policy whose `bind.groups` meets the
user's groups (nested membership included; groups are compared as canonical DNs or SIDs, never
by cn, see domain/groups.py) and whose `bind.pools` is empty or names the
desktop's pool applies, and the most restrictive value of each rule wins:
- apps and domains: allowed only if every applying policy allows them (intersection);
- clipboard, file transfer, printing, audio: allowed only if every applying policy allows them;
- watermark: on if any applying policy turns it on;
- idle timeout, session length, disconnect grace: the smallest;
- browser start page: that of the first applying policy (by name) that sets one.
Memory sharing is a property of a pool, not of a user: `sharing_allowed` says whether any policy
naming the pool forbids it.
No applying policy means the default policy: nothing allowed, watermark on, short limits.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DataRules:
    clipboard: bool = False
    file_transfer: bool = False
    printing: bool = False
    audio: bool = False


@dataclass(frozen=True)
class SessionLimits:
    idle_timeout_minutes: int = 15
    max_session_hours: int = 10
    disconnect_grace_minutes: int = 5


@dataclass(frozen=True)
class Policy:
    name: str
    groups: frozenset[str]  # canonical group references, full DNs or SIDs (domain/groups.py)
    pools: frozenset[str] = frozenset()  # empty: every pool
    apps: frozenset[str] = frozenset()
    domains: frozenset[str] = frozenset()  # "host.example.com" exact, "*.example.com" any subdomain
    data: DataRules = DataRules()
    watermark: bool = True
    session: SessionLimits = SessionLimits()
    description: str = ""
    start_page: str | None = None
    memory_sharing: bool = True

    def applies(self, groups: frozenset[str], pool: str | None) -> bool:
        return bool(self.groups & groups) and (not self.pools or pool is None or pool in self.pools)


DEFAULT = Policy(name="(default: deny)", groups=frozenset(), session=SessionLimits(15, 8, 5))


@dataclass(frozen=True)
class EffectivePolicy:
    applied: tuple[str, ...]
    apps: frozenset[str]
    domains: frozenset[str]
    data: DataRules
    watermark: bool
    session: SessionLimits
    reasons: dict[str, str] = field(default_factory=dict)
    start_page: str | None = None

    def allows_domain(self, host: str) -> bool:
        return any(rule_covers(rule, host.lower().rstrip(".")) for rule in self.domains)


def sharing_allowed(policies: list[Policy], pool: str) -> bool:
    """May the host merge memory pages of POOL's desktops (KSM)? Not if any policy naming the pool
    (or every pool) forbids it: the strictest wins, whoever signs in later."""
    return all(p.memory_sharing for p in policies if not p.pools or pool in p.pools)


def idle_domains(policies: list[Policy], pool: str) -> frozenset[str]:
    """What a desktop of POOL may reach while nobody is signed in to it: only what every policy
    naming the pool allows (nothing when no policy names it). An idle desktop has no agent whose
    groups could widen it."""
    naming = [p.domains for p in policies if pool in p.pools]
    return _intersect_domains(naming) if naming else frozenset()


def idle_apps(policies: list[Policy], pool: str) -> frozenset[str]:
    """The apps a desktop of POOL may run while nobody is signed in to it: those every policy
    naming the pool allows (none when no policy names it), as for domains."""
    naming = [p.apps for p in policies if pool in p.pools]
    return frozenset.intersection(*naming) if naming else frozenset()


def rule_covers(rule: str, what: str) -> bool:
    """Does RULE allow WHAT (a host name or another rule)?

    `example.com` covers only `example.com`. `*.example.com` covers `a.example.com`,
    `a.b.example.com` and `*.a.example.com`, but not `example.com` itself.
    """
    if not rule.startswith("*."):
        return rule == what
    suffix = rule[1:]  # ".example.com"
    return what.endswith(suffix) and len(what) > len(suffix)


def _intersect_domains(sets: list[frozenset[str]]) -> frozenset[str]:
    candidates = frozenset().union(*sets)
    return frozenset(r for r in candidates if all(any(rule_covers(mine, r) for mine in s) for s in sets))


def effective(policies: list[Policy], groups: frozenset[str], pool: str | None) -> EffectivePolicy:
    """The rules for a user with GROUPS (canonical references) on a desktop of POOL. Pure; most
    restrictive wins."""
    applying = sorted((p for p in policies if p.applies(groups, pool)), key=lambda p: p.name) or [DEFAULT]
    reasons = {p.name: "groups " + ", ".join(sorted(p.groups & groups)) for p in applying if p is not DEFAULT}
    return EffectivePolicy(
        applied=tuple(p.name for p in applying),
        apps=frozenset.intersection(*(p.apps for p in applying)),
        domains=_intersect_domains([p.domains for p in applying]),
        data=DataRules(**{k: all(getattr(p.data, k) for p in applying) for k in DataRules.__dataclass_fields__}),
        watermark=any(p.watermark for p in applying),
        session=SessionLimits(**{k: min(getattr(p.session, k) for p in applying)
                                 for k in SessionLimits.__dataclass_fields__}),
        reasons=reasons or {DEFAULT.name: "no policy binds to the user's groups"},
        start_page=next((p.start_page for p in applying if p.start_page), None),
    )


def diff_documents(old: dict[str, dict], new: dict[str, dict]) -> list[dict]:
    """What applying NEW over OLD changes, policy by policy and field by field (canonical docs)."""
    changes: list[dict] = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            changes.append({"policy": name, "change": "added", "fields": []})
        elif name not in new:
            changes.append({"policy": name, "change": "removed", "fields": []})
        else:
            fields = _field_changes(old[name], new[name], "")
            if fields:
                changes.append({"policy": name, "change": "changed", "fields": fields})
    return changes


def _field_changes(a: object, b: object, prefix: str) -> list[dict]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[dict] = []
        for key in sorted(set(a) | set(b)):
            out += _field_changes(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [{"field": prefix, "old": a, "new": b}]
