"""The in-guest agent's own check of a signed app allowlist (it cannot import ShiftDesk, so it
has its own copy of the verification): it accepts what the control plane signs for this desktop
and refuses what `domain.app_policy.verify` refuses, with the reason word the host is told."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.domain import guest_channel
from controlplane.domain.app_policy import AppPolicy, public_bytes, sign

AGENT = Path(__file__).resolve().parents[2] / "images/guest-agent/shiftdesk-guest-agent"
KEY = Ed25519PrivateKey.generate()
NAME = "sd-main-floor-0a1b2c"


@pytest.fixture
def agent(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "shiftdesk_channel", guest_channel)  # what the image installs beside it
    loader = importlib.machinery.SourceFileLoader("shiftdesk_guest_agent", str(AGENT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    monkeypatch.setattr(module, "POLICY_KEY", tmp_path / "policy-key")
    monkeypatch.setattr(module.socket, "gethostname", lambda: NAME)
    (tmp_path / "policy-key").write_text(public_bytes(KEY).hex())
    return module


def test_the_agent_accepts_a_list_signed_for_its_desktop(agent):
    signed = sign(KEY, AppPolicy.of(NAME, 3, {"mousepad"}))
    assert agent.verify_apps(signed.document, signed.signature)["apps"] == ["mousepad"]


@pytest.mark.parametrize(("make", "reason"), [
    (lambda: sign(KEY, AppPolicy.of("sd-main-floor-ffffff", 3, ())), "wrong-desktop"),
    (lambda: sign(Ed25519PrivateKey.generate(), AppPolicy.of(NAME, 3, ())), "bad-signature"),
])
def test_the_agent_refuses_another_desktops_list_or_another_key(agent, make, reason):
    signed = make()
    with pytest.raises(agent.Refusal, match=reason):
        agent.verify_apps(signed.document, signed.signature)


def test_a_widened_list_is_refused_and_no_pinned_key_refuses_everything(agent, tmp_path):
    signed = sign(KEY, AppPolicy.of(NAME, 3, {"mousepad"}))
    with pytest.raises(agent.Refusal, match="bad-signature"):
        agent.verify_apps(signed.document.replace("mousepad", "galculator"), signed.signature)
    (tmp_path / "policy-key").unlink()
    with pytest.raises(agent.Refusal, match="no-key"):
        agent.verify_apps(signed.document, signed.signature)
    assert agent.revision_of(signed.document) == 3 and agent.revision_of("not json") == 0


def test_the_launcher_offers_the_allowed_apps_only():
    rootfs = AGENT.parents[1] / "recipes/agent-desktop/rootfs"
    apply_apps = load_apply_apps()
    apply_apps.TINT2_BASE = rootfs / "etc/shiftdesk/tint2rc"
    catalogue = {k: v for k, v in json.loads((rootfs / "usr/share/shiftdesk/apps.json").read_text()).items()
                 if not k.startswith("_")}
    items = [line.split("=", 1)[1].strip() for line in apply_apps.launcher(catalogue, ["mousepad", "firefox-esr"])
             .splitlines() if line.startswith("launcher_item_app")]
    assert items == ["/usr/share/shiftdesk/applications/browser.desktop",
                     "/usr/share/shiftdesk/applications/editor.desktop"]
    assert not [line for line in apply_apps.launcher(catalogue, []).splitlines() if line.startswith("launcher_item")]


def test_a_clone_pins_the_first_real_key_and_a_templates_zero_key_pins_nothing(agent, tmp_path):
    (tmp_path / "policy-key").unlink()
    agent.pin_key(bytes(32))  # what a template is sent
    assert not (tmp_path / "policy-key").exists()
    agent.pin_key(b"\x01" * 32)
    agent.pin_key(b"\x02" * 32)  # a later identity never replaces it
    assert (tmp_path / "policy-key").read_text() == "01" * 32


def test_the_agent_reads_the_path_of_a_fapolicyd_denial_and_nothing_else(agent):
    """Lines as fapolicyd 1.1.7 logs them with the image's syslog_format."""
    deny = ("rule=3 dec=deny_syslog perm=execute auid=-1 pid=812 exe=/usr/bin/tint2 : "
            "path=/usr/bin/galculator ftype=application/x-executable trust=0\n")
    spaced = deny.replace("/usr/bin/galculator", "/home/agent/my app")
    allowed = deny.replace("dec=deny_syslog", "dec=allow_syslog")
    assert agent.denied_path(deny) == "/usr/bin/galculator"
    assert agent.denied_path(spaced) == "/home/agent/my app"
    assert agent.denied_path(allowed) is None
    assert agent.denied_path("Updated\n") is None
    assert agent.denied_path(deny.replace("galculator", "calc\x1b[2J")) is None  # not printable


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []

    def send(self, kind: str, **fields) -> None:
        self.messages.append((kind, fields))


def test_a_list_written_while_the_last_apply_finishes_is_written_again_until_answered(agent, tmp_path, monkeypatch):
    """systemd drops a path event that comes while shiftdesk-apps.service is still active: the
    first write goes unseen here, and a late answer about another revision is not ours."""
    monkeypatch.setattr(agent, "APPS_DIR", tmp_path)
    monkeypatch.setattr(agent, "RETRIGGER_S", 0.3)
    (tmp_path / "result").write_text("applied 2\n")  # the previous apply's answer
    signed = sign(KEY, AppPolicy.of(NAME, 3, {"mousepad"}))
    seen: list[int] = []

    def systemd() -> None:  # starts apply-apps on the second write only
        last = None
        while len(seen) < 2:
            try:
                stamp = (tmp_path / "policy.json").stat().st_mtime_ns, (tmp_path / "policy.json").stat().st_ino
            except FileNotFoundError:
                continue
            if stamp != last:
                last = stamp
                seen.append(json.loads((tmp_path / "policy.json").read_text())["doc"] == signed.document)
        (tmp_path / "result").write_text("applied 3\n")

    import threading  # noqa: PLC0415

    threading.Thread(target=systemd, daemon=True).start()
    link = Sent()
    agent.hand_over(link, {"doc": signed.document, "sig": signed.signature}, 3)
    assert link.messages == [("apps_applied", {"revision": 3})]
    assert len(seen) == 2 and all(seen)


def test_the_agent_says_ready_only_once_the_app_enforcer_is_active(agent, tmp_path, monkeypatch):
    """A template is saved when it says `ready`: saved with fapolicyd still starting (or failed),
    none of its clones could apply an allowlist."""
    monkeypatch.setattr(agent, "READY_FILE", tmp_path / "ready")
    (tmp_path / "ready").write_text("firefox-esr\n")
    states = iter([1, 3, 0])  # systemctl is-active: inactive, unknown, active
    monkeypatch.setattr(agent.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=next(states)))
    link = Sent()
    assert not agent.tell_ready(link) and not agent.tell_ready(link) and link.messages == []
    assert agent.tell_ready(link)
    assert link.messages == [("ready", {"window": "firefox-esr"})]


def load_apply_apps():
    rootfs = AGENT.parents[1] / "recipes/agent-desktop/rootfs"
    loader = importlib.machinery.SourceFileLoader("apply_apps", str(rootfs / "usr/lib/shiftdesk/apply-apps"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


@pytest.mark.parametrize(("states", "up"), [
    (["activating", "activating", "active"], True),  # a restart is waited out
    (["failed"], False),
    (["inactive"], False),
])
def test_apply_apps_answers_enforcer_down_instead_of_staying_silent(monkeypatch, states, up):
    apply_apps = load_apply_apps()
    answers = iter(states)
    monkeypatch.setattr(apply_apps.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=next(answers) + "\n"))
    monkeypatch.setattr(apply_apps.time, "sleep", lambda s: None)
    assert apply_apps.enforcer_up() is up
    if not up:
        with pytest.raises(apply_apps.Refused, match="enforcer-down"):
            answers = iter(states)
            apply_apps.reload_trust()
