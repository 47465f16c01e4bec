"""Policies as code: validate, diff, apply (atomic, versioned, audited), roll back, explain."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import yaml
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, select

from controlplane.db import audit
from controlplane.db import policies as repo
from controlplane.db.engine import session_scope
from controlplane.db.models import Desktop, PolicyRevision, Pool
from controlplane.domain.explain import explain_app, explain_name
from controlplane.domain.policy import DEFAULT, Policy, diff_documents, effective, idle_apps, idle_domains
from controlplane.domain.policy_load import PolicyInvalid, load, to_document, to_policy
from controlplane.errors import Conflict, InvalidInput, NotFound, PermanentError
from controlplane.services.context import Context

WRITE_ATTEMPTS = 8


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
    """All or nothing: every file valid, then one new revision holding exactly these policies.
    Unchanged input adds nothing."""
    texts = _by_policy(files)
    return _record(ctx, lambda _docs, _texts: texts, actor=actor, comment=comment, action="policy.apply")


def rollback(ctx: Context, revision: int, *, actor: str, comment: str = "") -> tuple[PolicyRevision, list[dict]]:
    with session_scope(ctx.engine) as session:
        old = repo.get_or_raise(session=session, revision=revision)
        texts = {name: _source(old, name) for name in old.documents}
    return _record(ctx, lambda _docs, _texts: texts, actor=actor, comment=comment or f"rollback to revision {revision}",
                   action="policy.rollback", rollback_of=revision)


def source(ctx: Context, name: str) -> tuple[int, str]:
    """Policy NAME as the YAML text it was last applied from, with the revision that holds it."""
    with session_scope(ctx.engine) as session:
        rev = repo.current(session=session)
        if rev is None or name not in rev.documents:
            raise NotFound(f"name: policy {name!r} does not exist", field="name")
        return rev.id or 0, _source(rev, name)


def put(ctx: Context, name: str, text: str, *, actor: str, create: bool = False,
        comment: str = "") -> tuple[PolicyRevision, list[dict]]:
    """Add or replace the one policy NAME (the others stay): a new revision. With CREATE, a
    policy of that name must not exist yet. For declarative clients (Terraform) that own one
    policy each and write them in parallel."""
    (policy,) = validate({f"{name}.yaml": text})
    if policy.name != name:
        raise InvalidInput(f"name: the document names {policy.name!r}, the request {name!r}", field="name")

    def change(docs: dict[str, dict[str, Any]], texts: dict[str, str]) -> dict[str, str]:
        if create and name in docs:
            raise Conflict(f"name: policy {name!r} already exists", field="name")
        return {**texts, name: text}
    return _record(ctx, change, actor=actor, comment=comment or f"put {name}", action="policy.apply")


def remove(ctx: Context, name: str, *, actor: str, comment: str = "") -> tuple[PolicyRevision, list[dict]]:
    """Remove the one policy NAME (the others stay): a new revision."""
    def change(docs: dict[str, dict[str, Any]], texts: dict[str, str]) -> dict[str, str]:
        if name not in docs:
            raise NotFound(f"name: policy {name!r} does not exist", field="name")
        return {k: v for k, v in texts.items() if k != name}
    return _record(ctx, change, actor=actor, comment=comment or f"remove {name}", action="policy.remove")


def _by_policy(files: dict[str, str]) -> dict[str, str]:
    """Policy name -> the text of the file that defines it (every file valid, one policy each)."""
    found = validate(files)
    return {policy.name: files[fname] for fname, policy in zip(sorted(files), found, strict=True)}


def _source(rev: PolicyRevision, name: str) -> str:
    """The text policy NAME of REV was applied from; its canonical form for revisions before 0015."""
    text = (rev.sources or {}).get(name)
    return text if text is not None else yaml.safe_dump(rev.documents[name], sort_keys=False)


Change = Callable[[dict[str, dict[str, Any]], dict[str, str]], dict[str, str]]


def _record(ctx: Context, change: Change, *, actor: str, comment: str, action: str,
            rollback_of: int | None = None) -> tuple[PolicyRevision, list[dict]]:
    """One new revision, made by CHANGE from the current one's documents and texts (policy name ->
    YAML text), in one transaction; nothing when neither changed. A revision's id is the current
    one's plus one, taken explicitly: of two writers that read the same revision, only one can
    write the next and the other does its change again on top of it (no lost update)."""
    for attempt in range(WRITE_ATTEMPTS):
        try:
            with session_scope(ctx.engine) as session:
                return _record_once(ctx, session, change, actor=actor, comment=comment, action=action,
                                    rollback_of=rollback_of)
        except (IntegrityError, OperationalError):  # another writer took the id, or SQLite's lock
            if attempt == WRITE_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def _record_once(ctx: Context, session: Session, change: Change, *, actor: str, comment: str, action: str,
                 rollback_of: int | None) -> tuple[PolicyRevision, list[dict]]:
    now = repo.current(session=session)
    old = now.documents if now else {}
    texts = change(old, {name: _source(now, name) for name in old} if now else {})
    documents = _documents(validate({f"{name}.yaml": text for name, text in texts.items()}))
    sha = _sha(documents)
    if now is not None and now.sha256 == sha and (now.sources or {}) == texts:
        return now, []
    changes = diff_documents(old, documents)
    rev = repo.create(session=session, revision=PolicyRevision(
        id=(now.id or 0) + 1 if now else 1, actor=actor, comment=comment, sha256=sha, documents=documents,
        sources=texts, rollback_of=rollback_of, created_at=ctx.clock.now()))
    audit.append(session=session, actor=actor, action=action, target=f"revision {rev.id}", sha256=sha,
                 comment=comment, changes=changes, rollback_of=rollback_of)
    return rev, changes


def history(ctx: Context) -> list[PolicyRevision]:
    with session_scope(ctx.engine) as session:
        return repo.history(session=session)


_PARSED: dict[str, tuple[Policy, ...]] = {}  # documents' sha256 -> the policies they hold
_PARSED_MAX = 16
_PARSED_LOCK = threading.Lock()  # the reconciler's workers ask at once


def active(ctx: Context) -> list[Policy]:
    """The policies in force."""
    return in_force(ctx)[1]


def active_in(session: Session) -> list[Policy]:
    """`active`, read in SESSION's transaction (a step that reads its rows anyway asks here)."""
    return in_force_in(session)[1]


def in_force(ctx: Context) -> tuple[int | None, list[Policy]]:
    """The current revision's id (None before the first) and the policies it holds, in one read."""
    with session_scope(ctx.engine) as session:
        return in_force_in(session)


def in_force_in(session: Session) -> tuple[int | None, list[Policy]]:
    """`in_force` in SESSION's transaction. Every step that places a desktop and every connect
    asks, so only the head's id and sha256 are read; its documents are read and parsed once: a
    revision never changes, and its sha256 (of the documents) names what they hold in any database."""
    head = repo.head(session=session)
    if head is None:
        return None, []
    revision, sha = head
    with _PARSED_LOCK:
        parsed = _PARSED.get(sha)
    if parsed is None:
        documents = repo.get_or_raise(session=session, revision=revision).documents
        parsed = tuple(to_policy(doc) for doc in documents.values())
        with _PARSED_LOCK:
            while len(_PARSED) >= _PARSED_MAX:
                _PARSED.pop(next(iter(_PARSED)))
            _PARSED[sha] = parsed
    return revision, list(parsed)


@dataclass(frozen=True)
class Occupancy:
    """Who is on a desktop now, which is what its rules follow."""

    name: str
    pool: str
    user: str | None = None  # the agent signed in to it; None while nobody is
    groups: frozenset[str] | None = None  # the groups their sign-in carried
    ipv4: str | None = None
    host_id: int = 0


@dataclass(frozen=True)
class DesktopRules:
    """What one desktop may reach and run now, and which policies decided it."""

    name: str
    ipv4: str | None
    user: str | None  # the agent signed in to it; None while nobody is
    apps: frozenset[str]
    domains: frozenset[str]
    policies: tuple[str, ...]
    host_id: int = 0


def on_desktops(ctx: Context, *where: Any, every_host: bool = False) -> list[DesktopRules]:
    """Each desktop of this host (of every host with EVERY_HOST) matching WHERE (SQL conditions),
    with the rules in force on it (`rules_on`)."""
    with session_scope(ctx.engine) as session:  # columns, not objects: every pass reads every desktop
        here = () if every_host else (Desktop.host_id == ctx.host_id,)
        found = session.exec(select(  # type: ignore[call-overload]
            Desktop.name, Pool.name, Desktop.assigned_to, Desktop.assigned_groups, Desktop.ipv4, Desktop.host_id,
        ).join(Pool).where(*here, *where)).all()
    return rules_on(active(ctx), [Occupancy(name, pool, user, frozenset(groups) if groups is not None else None,
                                            ipv4, host_id) for name, pool, user, groups, ipv4, host_id in found])


def rules_on(rules: list[Policy], desktops: Iterable[Occupancy]) -> list[DesktopRules]:
    """The rules in force on each of DESKTOPS: the effective policy of the agent signed in (from
    the groups their sign-in carried), or while nobody is, what every policy naming its pool
    allows (an idle desktop has no agent whose groups could widen it). The egress resolver and
    the app allowlists both follow this one rule. Worked out once per pool and groups: thousands
    of desktops share a few."""
    decided: dict[tuple[str, frozenset[str] | None], tuple[frozenset[str], frozenset[str], tuple[str, ...]]] = {}
    result = []
    for d in desktops:
        groups = d.groups if d.user is not None else None
        if (key := (d.pool, groups)) not in decided:
            if groups is not None:
                eff = effective(rules, groups, d.pool)
                decided[key] = (eff.apps, eff.domains, eff.applied)
            else:
                naming = tuple(sorted(p.name for p in rules if d.pool in p.pools))
                decided[key] = (idle_apps(rules, d.pool), idle_domains(rules, d.pool), naming)
        apps, domains, applied = decided[key]
        result.append(DesktopRules(d.name, d.ipv4, d.user, apps, domains, applied, d.host_id))
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
    revision, rules = in_force(ctx)
    eff = effective(rules, groups, pool)
    return {
        "user": username, "pool": pool, "groups": sorted(groups), "revision": revision,
        "applied": list(eff.applied), "reasons": eff.reasons, "apps": sorted(eff.apps),
        "domains": sorted(eff.domains), "data": asdict(eff.data), "watermark": eff.watermark,
        "session": asdict(eff.session), "start_page": eff.start_page,
    }
