"""Instant-clone templates on each host: observe, plan (domain/templates.py), act.

Run by the reconciler at the start of each pass. Which templates are wanted follows from the
pools (instant-clone pools, by image and machine shape); which may go follows from the desktops
(a template stays while any desktop of its image exists, since clones' disks are backed by it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controlplane.db import audit, images
from controlplane.db.engine import session_scope
from controlplane.domain import templates as t
from controlplane.domain.placement import HostMode
from controlplane.domain.policy import Policy, sharing_allowed
from controlplane.domain.ports import BootImage, Readiness, TemplateKey
from controlplane.services import hosts
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
                     readiness=Readiness(image.manifest.get("readiness", Readiness.SERIAL.value)),
                     first_apps=_first_apps(image.manifest))


def _first_apps(manifest: Mapping[str, Any]) -> frozenset[str] | None:
    """What the image's desktops run before the host's first app allowlist, as its manifest says
    (None when it does not: then a desktop is ready only once it applies ours)."""
    apps = manifest.get("first_apps")
    if not isinstance(apps, list) or not all(isinstance(a, str) for a in apps):
        return None
    return frozenset(apps)


def plan(ctx: Context, seen: Sequence[hosts.ObservedHost], wanted: frozenset[TemplateKey],
         images_in_use: Mapping[int, frozenset[int]]) -> list[t.TemplateAction]:
    """Template steps for every host that answered (SEEN: this pass's look at them). An active
    host keeps a template of every WANTED one (so a shift's first clones need no boot wherever
    they are placed); a host in maintenance gets none new, and keeps those its desktops' disks
    are backed by (IMAGES_IN_USE: host id to the images of its desktops' rows)."""
    now, timeout = int(ctx.clock.now().timestamp()), int(ctx.limits.boot_timeout.total_seconds())
    steps: list[t.TemplateAction] = []
    for host in seen:
        if host.templates is None:
            log.warning("templates of host %s not looked at this pass: %s", host.ref.name, host.view.down_reason)
            continue
        steps += t.plan_templates(host.ref.id, wanted if host.ref.mode == HostMode.ACTIVE else frozenset(),
                                  images_in_use.get(host.ref.id, frozenset()), host.templates, now, timeout)
    return steps


def build(ctx: Context, a: t.BuildTemplate) -> None:
    with session_scope(ctx.engine) as session:
        image = images.get(session=session, image_id=a.key.image_id)
        if image is None:
            return  # the image went since the plan: nothing wants this template any more
        boot = boot_image(image)
        audit.append(session=session, actor=ACTOR, action="template.build", target=a.key.slug, host=a.host_id,
                     image=f"{image.name}:{image.version}")
    ctx.driver(a.host_id).build_template(a.key, boot)
    ctx.crashpoint("template.after-build")


def save(ctx: Context, a: t.SaveTemplate) -> None:
    ctx.driver(a.host_id).save_template(a.key)
    ctx.crashpoint("template.after-save")
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=ACTOR, action="template.saved", target=a.key.slug, host=a.host_id)


def remove(ctx: Context, a: t.RemoveTemplate) -> None:
    ctx.driver(a.host_id).remove_template(a.key)
    with session_scope(ctx.engine) as session:
        audit.append(session=session, actor=ACTOR, action="template.remove", target=a.key.slug, host=a.host_id,
                     reason=a.reason)
    log.info("template %s removed: %s", a.key.slug, a.reason)


STEPS: dict[type, Callable[[Context, Any], None]] = {
    t.BuildTemplate: build,
    t.SaveTemplate: save,
    t.RemoveTemplate: remove,
}
