"""Why a name or an application is allowed or refused for one user on one pool: the answer an
admin needs when an agent says "the CRM does not load" or "the calculator will not start".

The most restrictive policy wins, so a subject is allowed only when every policy that applies
allows it; the verdict lists each applying policy with the rule that lets the subject through,
or why it does not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from controlplane.domain.egress import decide_name
from controlplane.domain.policy import Policy


@dataclass(frozen=True)
class Verdict:
    subject: str
    allowed: bool
    by_policy: dict[str, str]  # applying policy -> the rule that allows the subject, or why not
    refused_by: tuple[str, ...]  # the policies that refuse it (empty when allowed)


def explain_name(applying: list[Policy], name: str) -> Verdict:
    host = name.lower().rstrip(".")
    decisions = {p.name: decide_name(p.domains, host) for p in applying}
    return _verdict(host, {k: (d.allowed, d.rule) for k, d in decisions.items()})


def explain_app(applying: list[Policy], app: str) -> Verdict:
    """APP by name ("firefox-esr") or path ("/usr/bin/firefox-esr"): policies list names."""
    wanted = PurePosixPath(app).name
    return _verdict(wanted, {p.name: (wanted in p.apps, f"apps.allow: {wanted}" if wanted in p.apps
                                      else "not in apps.allow") for p in applying})


def _verdict(subject: str, decisions: dict[str, tuple[bool, str]]) -> Verdict:
    refused = tuple(name for name, (ok, _) in decisions.items() if not ok)
    return Verdict(subject=subject, allowed=bool(decisions) and not refused,
                   by_policy={name: rule for name, (_, rule) in decisions.items()}, refused_by=refused)
