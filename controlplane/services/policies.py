"""Policies as code: validate, diff, apply (atomic, versioned, audited), roll back, explain."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlmodel import select

from controlplane.db import audit
from controlplane.db import policies as repo
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, PolicyRevision, Pool
from controlplane.domain.explain import explain_app, explain_name
from controlplane.domain.policy import DEFAULT, Policy, diff_documents, effective, idle_apps, idle_domains
from controlplane.domain.policy_load import PolicyInvalid, load, to_document, to_policy
from controlplane.errors import InvalidInput, NotFound, PermanentError
from controlplane.services.context import Context


class PolicyFilesInvalid(InvalidInput):
    """Carries every PolicyError (file, line, field) for the API and the CLI to show."""

    def __init__(self, err: PolicyInvalid) -> None:
        first = err.errors[0]
        super().__init__(str(err), field=f"{first.file}:{first.line}:{first.field}")
        self.errors = err.errors


def validate(files: dict[str, str]) -> list[Policy]:
    try:
        return load(files)
    except PolicyInvalid as err:
        raise PolicyFilesInvalid(err) from None


def _documents(policies: list[Policy]) -> dict[str, dict[str, Any]]:
    return {p.name: to_document(p) for p in policies}


def _sha(documents: dict[str, dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()


def current_documents(ctx: Context) -> tuple[int | None, dict[str, dict[str, Any]]]:
    with session_scope(ctx.engine) as session:
        rev = repo.current(session=session)
        return (rev.id, rev.documents) if rev else (None, {})


def diff(ctx: Context, files: dict[str, str]) -> list[dict]:
    _, old = current_documents(ctx)
    return diff_documents(old, _documents(validate(files)))


def apply(ctx: Context, files: dict[str, str], *, actor: str, comment: str = "") -> tuple[PolicyRevision, list[dict]]:
    """All or nothing: every file valid, then one new revision. Unchanged input adds nothing."""
    documents = _documents(validate(files))
    return _record(ctx, documents, actor=actor, comment=comment, rollback_of=None)


def rollback(ctx: Context, revision: int, *, actor: str, comment: str = "") -> tuple[PolicyRevision, list[dict]]:
    with session_scope(ctx.engine) as session:
        documents = repo.get_or_raise(session=session, revision=revision).documents
    return _record(ctx, documents, actor=actor, comment=comment or f"rollback to revision {revision}",
                   rollback_of=revision)


def _record(ctx: Context, documents: dict[str, dict[str, Any]], *, actor: str, comment: str,
            rollback_of: int | None) -> tuple[PolicyRevision, list[dict]]:
    sha = _sha(documents)
    with session_scope(ctx.engine) as session:
        now = repo.current(session=session)
        changes = diff_documents(now.documents if now else {}, documents)
        if now is not None and now.sha256 == sha:
            return now, []
        rev = repo.create(session=session, revision=PolicyRevision(
            actor=actor, comment=comment, sha256=sha, documents=documents, rollback_of=rollback_of,
            created_at=ctx.clock.now()))
        audit.append(session=session, actor=actor, action="policy.rollback" if rollback_of else "policy.apply",
                     target=f"revision {rev.id}", sha256=sha, comment=comment, changes=changes,
                     rollback_of=rollback_of)
        return rev, changes


def history(ctx: Context) -> list[PolicyRevision]:
    with session_scope(ctx.engine) as session:
        return repo.history(session=session)


def active(ctx: Context) -> list[Policy]:
    _, documents = current_documents(ctx)
    return [to_policy(doc) for doc in documents.values()]


@dataclass(frozen=True)
class DesktopRules:
    """What one desktop may reach and run now, and which policies decided it."""

    name: str
    ipv4: str | None
    user: str | None  # the agent signed in to it; None while nobody is
    apps: frozenset[str]
    domains: frozenset[str]
    policies: tuple[str, ...]


def on_desktops(ctx: Context, *where: Any) -> list[DesktopRules]:
    """Each desktop of this host matching WHERE (SQL conditions), with the rules in force on it:
    the effective policy of the agent signed in (from the groups their sign-in carried), or while
    nobody is, what every policy naming its pool allows (an idle desktop has no agent whose groups
    could widen it). The egress resolver and the app allowlists both follow this one rule."""
    rules = active(ctx)
    with session_scope(ctx.engine) as session:
        rows = session.exec(select(Desktop, Pool).join(Pool).where(  # type: ignore[arg-type]
            Desktop.host_id == ctx.host_id, *where)).all()
        found = [(d.name, d.ipv4, d.assigned_to, d.assigned_groups, p.name) for d, p in rows]
    result = []
    for name, ipv4, user, groups, pool in found:
        if user is not None and groups is not None:
            eff = effective(rules, frozenset(groups), pool)
            result.append(DesktopRules(name, ipv4, user, eff.apps, eff.domains, eff.applied))
        else:
            naming = tuple(sorted(p.name for p in rules if pool in p.pools))
            result.append(DesktopRules(name, ipv4, None, idle_apps(rules, pool), idle_domains(rules, pool), naming))
    return result


def explain(ctx: Context, username: str, pool: str | None = None, *, name: str | None = None,
            app: str | None = None) -> dict[str, Any]:
    """The effective policy of USERNAME (on a desktop of POOL), with why each policy applies;
    with NAME or APP, also which rule of which policy allows or refuses that host name or app."""
    if ctx.directory is None:
        raise PermanentError("policy explain: no directory configured (SHIFTDESK_LDAP__URL)")
    who = ctx.directory.lookup(username)
    if who is None:
        raise NotFound(f"user: {username!r} is not in the directory", field="user")
    result = effective_for(ctx, who.username, who.groups, pool)
    applying = [p for p in active(ctx) if p.name in result["applied"]] or [DEFAULT]
    if name is not None:
        result["name"] = asdict(explain_name(applying, _checked_name(name)))
    if app is not None:
        result["app"] = asdict(explain_app(applying, app))
    return result


def _checked_name(name: str) -> str:
    host = name.strip().lower().rstrip(".")
    if not host or len(host) > 253 or not all(c.isalnum() or c in "-._*" for c in host):
        raise InvalidInput(f"name: {name!r} is not a host name", field="name")
    return host


def effective_for(ctx: Context, username: str, groups: frozenset[str], pool: str | None) -> dict[str, Any]:
    revision, _ = current_documents(ctx)
    eff = effective(active(ctx), groups, pool)
    return {
        "user": username, "pool": pool, "groups": sorted(groups), "revision": revision,
        "applied": list(eff.applied), "reasons": eff.reasons, "apps": sorted(eff.apps),
        "domains": sorted(eff.domains), "data": asdict(eff.data), "watermark": eff.watermark,
        "session": asdict(eff.session), "start_page": eff.start_page,
    }
