"""Instant-clone templates on this host: observe, plan (domain/templates.py), act.

Run by the reconciler at the start of each pass. Which templates are wanted follows from the
pools (instant-clone pools, by image and machine shape); which may go follows from the desktops
(a template stays while any desktop of its image exists, since clones' disks are backed by it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controlplane.db import audit, desktops, images, pools
from controlplane.db.engine import session_scope
from controlplane.domain import templates as t
from controlplane.domain.policy import Policy, sharing_allowed
from controlplane.domain.ports import BootImage, CloneMode, Readiness, TemplateKey
from controlplane.services import policies
from controlplane.services.context import Context

ACTOR = "reconciler"
log = logging.getLogger(__name__)


def key_of(pool: Any, policies: list[Policy]) -> TemplateKey:
    """The template a pool's clones come from: its image, machine shape and memory sharing."""
    return TemplateKey(pool.image_id, pool.memory_mib, pool.vcpus, shares_memory(pool, policies))


def shares_memory(pool: Any, policies: list[Policy]) -> bool:
    return bool(pool.memory_sharing) and sharing_allowed(policies, pool.name)


def boot_image(image: Any) -> BootImage:
    """The bootable parts of an image row (readiness comes from the image's manifest)."""
    return BootImage(disk=Path(image.disk_path), kernel=Path(image.kernel_path),
                     initrd=Path(image.initrd_path) if image.initrd_path else None, cmdline=image.cmdline,
                     image_id=image.id or 0,
                     readiness=Readiness(image.manifest.get("readiness", Readiness.SERIAL.value)))


def plan(ctx: Context) -> list[t.TemplateAction]:
    rules = policies.active(ctx)
    with session_scope(ctx.engine) as session:
        wanted = {key_of(p, rules) for p in pools.list_all(session=session)
                  if p.clone == CloneMode.INSTANT and not p.deleting}
        in_use = {d.image_id for d in desktops.list_all(session=session)}
    return t.plan_templates(wanted, in_use, ctx.hypervisor.list_templates(), int(ctx.clock.now().timestamp()),
                            int(ctx.limits.boot_timeout.total_seconds()))


def build(ctx: Context, a: t.BuildTemplate) -> None:
    with session_scope(ctx.engine) as session:
        image = images.get(session=session, image_id=a.key.image_id)
        if image is None:
            return  # the image went since the plan: nothing wants this template any more
        boot = boot_image(image)
        audit.append(session=session, actor=ACTOR, action="template.build", target=a.key.slug,
                     image=f"{image.name}:{image.version}")
    ctx.hypervisor.build_template(a.key, boot)
    ctx.crashpoint("template.after-build")


def save(ctx: Context, a: t.SaveTemplate) -> None:
    ctx.hypervisor.save_template(a.key)
    ctx.crashpoint("template.after-save")
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=ACTOR, action="template.saved", target=a.key.slug)


def remove(ctx: Context, a: t.RemoveTemplate) -> None:
    ctx.hypervisor.remove_template(a.key)
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=ACTOR, action="template.remove", target=a.key.slug, reason=a.reason)
    log.info("template %s removed: %s", a.key.slug, a.reason)


STEPS: dict[type, Callable[[Context, Any], None]] = {
    t.BuildTemplate: build,
    t.SaveTemplate: save,
    t.RemoveTemplate: remove,
}
