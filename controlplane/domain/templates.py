"""Instant-clone templates: which ones a host should have, and the steps to get there.

A template is wanted for every (image, memory, vCPUs) an instant-clone pool asks for. It is
built by a cold boot, saved once its guest is ready, and removed when no pool wants it and no
desktop of its image is left (a clone's disk is an overlay on the template's disk, so the
template outlives its last clone). A template stuck booting past the timeout, or whose guest
was quarantined, is removed and built again on a later pass. A saved template whose memory could
not be restored is retired (provisioning does it: its desktops boot instead); it is removed once
no desktop's disk is backed by it any more, and then built again. Pure, like planning.plan().
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from controlplane.domain.ports import ObservedTemplate, TemplateKey


@dataclass(frozen=True)
class BuildTemplate:
    key: TemplateKey
    host_id: int


@dataclass(frozen=True)
class SaveTemplate:
    key: TemplateKey
    host_id: int


@dataclass(frozen=True)
class RemoveTemplate:
    key: TemplateKey
    host_id: int
    reason: str


TemplateAction = BuildTemplate | SaveTemplate | RemoveTemplate


def plan_templates(host_id: int, wanted: AbstractSet[TemplateKey], images_in_use: AbstractSet[int],
                   observed: Mapping[TemplateKey, ObservedTemplate], now: int, timeout_s: int) -> list[TemplateAction]:
    """Steps towards WANTED templates on HOST_ID. IMAGES_IN_USE: image ids of its desktops' rows."""
    out: list[TemplateAction] = []
    for key in sorted(wanted - set(observed), key=lambda k: k.slug):
        out.append(BuildTemplate(key, host_id))
    for key, tpl in sorted(observed.items(), key=lambda kv: kv[0].slug):
        if tpl.retired:
            if not tpl.backs_desktops:
                out.append(RemoveTemplate(key, host_id, "retired, and no desktop's disk is backed by it any more"))
            continue
        if key not in wanted:
            if key.image_id not in images_in_use:
                out.append(RemoveTemplate(key, host_id, "no pool uses it"))
            elif tpl.defined and not tpl.saved:
                out.append(RemoveTemplate(key, host_id, "no pool wants it any more"))  # nothing is backed by it yet
            continue
        if tpl.saved:
            if tpl.defined:
                out.append(SaveTemplate(key, host_id))  # saved, but a crash kept its domain defined: finish
        elif tpl.quarantined:
            out.append(RemoveTemplate(key, host_id, f"guest quarantined: {tpl.quarantined}"))
        elif tpl.running and tpl.ready:
            out.append(SaveTemplate(key, host_id))
        elif not tpl.running:
            out.append(RemoveTemplate(key, host_id, "template stopped before it was saved"))
        elif tpl.created and now - tpl.created > timeout_s:
            out.append(RemoveTemplate(key, host_id, f"not ready {timeout_s} s after start"))
    return out
