"""Template planning: build what pools want, save what is ready, remove what nothing needs."""

from __future__ import annotations

from controlplane.domain.ports import ObservedTemplate, TemplateKey
from controlplane.domain.templates import BuildTemplate, RemoveTemplate, SaveTemplate, plan_templates

H = 1  # the host planned for

A, B = TemplateKey(1, 1024, 2), TemplateKey(2, 1024, 2)


def obs(key, *, defined=True, running=True, ready=False, saved=False, created=1000, quarantined=None):
    return ObservedTemplate(key, defined=defined, running=running, ready=ready, saved=saved, created=created,
                            quarantined=quarantined)


def test_a_wanted_template_is_built_then_saved_then_left_alone():
    assert plan_templates(H, {A}, set(), {}, 1000, 120) == [BuildTemplate(A, H)]
    assert plan_templates(H, {A}, set(), {A: obs(A)}, 1010, 120) == []
    assert plan_templates(H, {A}, set(), {A: obs(A, ready=True)}, 1010, 120) == [SaveTemplate(A, H)]
    assert plan_templates(H, {A}, {1}, {A: obs(A, defined=False, running=False, saved=True)}, 1010, 120) == []


def test_a_save_interrupted_after_the_file_is_finished_is_completed():
    assert plan_templates(H, {A}, set(), {A: obs(A, running=False, saved=True)}, 1010, 120) == [SaveTemplate(A, H)]


def test_stuck_stopped_or_quarantined_templates_are_removed():
    stuck = plan_templates(H, {A}, set(), {A: obs(A)}, 1200, 120)
    assert stuck == [RemoveTemplate(A, H, "not ready 120 s after start")]
    assert plan_templates(H, {A}, set(), {A: obs(A, running=False)}, 1010, 120)[0].key == A
    got = plan_templates(H, {A}, set(), {A: obs(A, quarantined="flood")}, 1010, 120)
    assert got == [RemoveTemplate(A, H, "guest quarantined: flood")]


def test_an_unwanted_template_stays_while_desktops_of_its_image_exist():
    saved = obs(B, defined=False, running=False, saved=True)
    assert plan_templates(H, {A}, {2}, {B: saved}, 1010, 120) == [BuildTemplate(A, H)]
    assert plan_templates(H, set(), set(), {B: saved}, 1010, 120) == [RemoveTemplate(B, H, "no pool uses it")]
    booting = obs(B)  # never saved: no clone can be backed by it
    assert plan_templates(H, set(), {2}, {B: booting}, 1010, 120) == [RemoveTemplate(B, H, "no pool wants it any more")]


def test_a_retired_template_is_neither_rebuilt_nor_removed_while_a_desktop_is_backed_by_it():
    """Building it again would put other bytes under its clones' overlays: it waits, wanted or
    not, until no desktop's disk is backed by it; then it goes (and a later pass builds it)."""
    backing = ObservedTemplate(A, defined=False, running=False, ready=False, saved=False, retired=True,
                               backs_desktops=True)
    assert plan_templates(H, {A}, {1}, {A: backing}, 1010, 120) == []
    assert plan_templates(H, set(), set(), {A: backing}, 1010, 120) == []
    free = ObservedTemplate(A, defined=False, running=False, ready=False, saved=False, retired=True)
    assert plan_templates(H, {A}, {1}, {A: free}, 1010, 120) == [
        RemoveTemplate(A, H, "retired, and no desktop's disk is backed by it any more")]
    assert plan_templates(H, {A}, {1}, {}, 1020, 120) == [BuildTemplate(A, H)]


def test_template_keys_survive_their_names():
    for key in (A, TemplateKey(3, 256, 1, shared=False)):
        assert TemplateKey.parse(key.slug) == key
    for bad in ("i1-m2", "i1-m2-c3-shared", "x1-m2-c3", "i1-m2-cx", ""):
        assert TemplateKey.parse(bad) is None
