"""Policies as code over HTTP: schema, validate, diff, apply, history, rollback, explain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from controlplane.api.deps import Actor, CtxDep, current_admin
from controlplane.api.schemas import PolicyFiles, Rollback
from controlplane.domain.policy_schema import SCHEMA
from controlplane.services import policies

router = APIRouter(prefix="/api/v1/policies", tags=["policies"], dependencies=[Depends(current_admin)])


def _revision(rev: Any, changes: list[dict]) -> dict[str, Any]:
    return {"revision": rev.id, "sha256": rev.sha256, "actor": rev.actor, "comment": rev.comment,
            "created_at": rev.created_at, "rollback_of": rev.rollback_of, "policies": sorted(rev.documents),
            "changes": changes}


@router.get("/schema")
def schema() -> dict[str, Any]:
    return SCHEMA


@router.get("")
def current(ctx: CtxDep) -> dict[str, Any]:
    revision, documents = policies.current_documents(ctx)
    return {"revision": revision, "policies": documents}


@router.post("/validate")
def validate(body: PolicyFiles) -> dict[str, Any]:
    return {"valid": True, "policies": sorted(p.name for p in policies.validate(body.files))}


@router.post("/diff")
def diff(body: PolicyFiles, ctx: CtxDep) -> dict[str, Any]:
    return {"changes": policies.diff(ctx, body.files)}


@router.post("/apply")
def apply(body: PolicyFiles, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    rev, changes = policies.apply(ctx, body.files, actor=actor, comment=body.comment)
    return _revision(rev, changes)


@router.get("/revisions")
def revisions(ctx: CtxDep) -> list[dict[str, Any]]:
    return [_revision(r, []) for r in policies.history(ctx)]


@router.post("/rollback")
def rollback(body: Rollback, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    rev, changes = policies.rollback(ctx, body.revision, actor=actor, comment=body.comment)
    return _revision(rev, changes)


@router.get("/explain")
def explain(user: str, ctx: CtxDep, pool: str | None = None, name: str | None = None,
            app: str | None = None) -> dict[str, Any]:
    """The effective policy of USER; with `name` or `app`, which rule allows or refuses it."""
    return policies.explain(ctx, user, pool, name=name, app=app)
