"""Golden images: build from a recipe, register as an immutable version, deprecate, delete.

A version's files live in IMAGE_STORE/<name>/<sha256> and never change; desktops' overlays
point at them as backing files. Registering the same bytes twice returns the existing version.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from controlplane.db import audit, desktops, images, pools, rollouts
from controlplane.db.engine import session_scope
from controlplane.db.models import Image
from controlplane.domain.naming import InvalidName, check_name
from controlplane.errors import Conflict, InvalidInput
from controlplane.services.context import Context


def build(ctx: Context, recipe: str, *, actor: str) -> Image:
    """Build RECIPE and register the result (idempotent for identical bytes)."""
    if ctx.builder is None:
        raise InvalidInput("image build: no image builder configured", field="recipe")
    try:
        check_name("recipe", recipe)
    except InvalidName as err:
        raise InvalidInput(str(err), field="recipe") from err
    ctx.image_store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=ctx.image_store) as tmp:
        manifest = ctx.builder.build(recipe, Path(tmp))
        return register(ctx, Path(tmp), manifest, actor=actor)


def register(ctx: Context, built: Path, manifest: dict, *, actor: str) -> Image:
    """Move a finished build into the store and record it as the next version."""
    name = manifest["recipe"]
    disk_sha = _sha256(built / "disk.qcow2")
    if disk_sha != manifest["sha256"]["disk.qcow2"]:
        raise InvalidInput("image register: disk.qcow2 does not match its manifest", field="manifest")
    with session_scope(ctx.engine) as session:
        existing = images.by_sha256(session=session, name=name, sha256=disk_sha)
        if existing is not None:
            return existing
    dest = ctx.image_store / name / disk_sha
    if not dest.exists():
        staging = dest.with_name(f".{disk_sha}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(built, staging)
        for f in staging.iterdir():
            f.chmod(0o444)  # immutable by convention and by mode
        staging.rename(dest)
    with session_scope(ctx.engine) as session:
        image = Image(
            name=name, version=images.next_version(session=session, name=name), recipe=name,
            sha256=disk_sha, size_bytes=(dest / "disk.qcow2").stat().st_size,
            disk_path=str(dest / "disk.qcow2"), kernel_path=str(dest / "vmlinuz"),
            initrd_path=str(dest / "initrd.img") if (dest / "initrd.img").exists() else None,
            cmdline=manifest["cmdline"], manifest=manifest, built_at=ctx.clock.now(),
        )
        images.create(session=session, image=image)
        audit.append(session=session, actor=actor, action="image.register", target=f"{name}:{image.version}",
                     sha256=disk_sha, packages=manifest.get("packages", {}))
        return image


def list_all(ctx: Context) -> list[Image]:
    with session_scope(ctx.engine) as session:
        return images.list_all(session=session)


def get(ctx: Context, ref: str) -> Image:
    with session_scope(ctx.engine) as session:
        return images.resolve(session=session, ref=ref)


def deprecate(ctx: Context, ref: str, *, actor: str) -> Image:
    """Deprecated versions keep serving existing pools but are no longer picked by name."""
    with session_scope(ctx.engine) as session:
        image = images.resolve(session=session, ref=ref if ":" in ref else _newest(ref, session))
        image.deprecated = True
        session.add(image)
        audit.append(session=session, actor=actor, action="image.deprecate", target=f"{image.name}:{image.version}")
        return image


def delete(ctx: Context, ref: str, *, actor: str) -> None:
    """Delete one version; refused while a pool, a desktop or a rollout in progress still uses it."""
    with session_scope(ctx.engine) as session:
        image = images.resolve(session=session, ref=ref if ":" in ref else _newest(ref, session))
        users = [p.name for p in pools.using_image(session=session, image_id=image.id or 0)]
        if users or desktops.using_image(session=session, image_id=image.id or 0):
            raise Conflict(f"image {image.name}:{image.version} is used by pool(s) {', '.join(users) or '?'}",
                           field="image")
        if rolling := rollouts.active_using(session=session, image_id=image.id or 0):
            raise Conflict(f"image {image.name}:{image.version} is part of a rollout in progress (rollout "
                           f"{', '.join(str(r.id) for r in rolling)})", field="image")
        images.delete(session=session, image=image)
        audit.append(session=session, actor=actor, action="image.delete", target=f"{image.name}:{image.version}",
                     sha256=image.sha256)
        folder = Path(image.disk_path).parent
    shutil.rmtree(folder, ignore_errors=True)


def _newest(name: str, session) -> str:  # type: ignore[no-untyped-def]
    """Deprecate/delete by bare name act on the newest version, deprecated or not."""
    versions = [i for i in images.list_all(session=session) if i.name == name]
    return f"{name}:{versions[-1].version}" if versions else name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

