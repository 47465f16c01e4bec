"""Policies as code over HTTP: schema, validate, diff, apply, history, rollback, explain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, status

from controlplane.api.deps import Actor, CtxDep, current_admin
from controlplane.api.schemas import PolicyFiles, PolicySource, Rollback, same_as_path
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


# One policy at a time, for declarative clients (the Terraform module in terraform/): each write
# is a revision of its own, like `apply`, with the other policies unchanged.
@router.post("/documents", status_code=status.HTTP_201_CREATED)
def create_document(body: PolicySource, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    policies.put(ctx, body.name, body.yaml, actor=actor, create=True)
    return read_document(body.name, ctx)


@router.get("/documents/{name}")
def read_document(name: str, ctx: CtxDep) -> dict[str, Any]:
    revision, text = policies.source(ctx, name)
    return {"name": name, "yaml": text, "revision": revision}


@router.put("/documents/{name}")
def replace_document(name: str, body: PolicySource, ctx: CtxDep, actor: Actor) -> dict[str, Any]:
    same_as_path("name", name, body.name)
    policies.put(ctx, name, body.yaml, actor=actor)
    return read_document(name, ctx)


@router.delete("/documents/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_document(name: str, ctx: CtxDep, actor: Actor) -> None:
    policies.remove(ctx, name, actor=actor)


@router.get("/explain")
def explain(user: str, ctx: CtxDep, pool: str | None = None, name: str | None = None,
            app: str | None = None) -> dict[str, Any]:
    """The effective policy of USER; with `name` or `app`, which rule allows or refuses it."""
    return policies.explain(ctx, user, pool, name=name, app=app)
