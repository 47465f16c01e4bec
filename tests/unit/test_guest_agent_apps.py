"""The in-guest agent's own check of a signed app allowlist (it cannot import ShiftDesk, so it
has its own copy of the verification): it accepts what the control plane signs for this desktop
and refuses what `domain.app_policy.verify` refuses, with the reason word the host is told."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import json
import os
import queue
import sys
import threading
import time
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


def test_a_list_handed_over_while_apply_apps_is_away_is_handed_over_again_until_answered(agent, tmp_path,
                                                                                        monkeypatch):
    """apply-apps is restarting when the list comes: the first kick reaches nobody. It answers
    the list once it listens; an earlier answer about another revision is not ours."""
    monkeypatch.setattr(agent, "APPS_DIR", tmp_path)
    monkeypatch.setattr(agent, "KICK", tmp_path / "kick")
    monkeypatch.setattr(agent, "RESULT", tmp_path / "result")
    monkeypatch.setattr(agent, "RETRIGGER_S", 0.3)
    os.mkfifo(tmp_path / "kick", 0o600)
    (tmp_path / "result").write_text("applied 2\n")  # the previous list's answer
    signed = sign(KEY, AppPolicy.of(NAME, 3, {"mousepad"}))
    woken: list[bytes] = []

    def apply_apps() -> None:  # comes up late, and answers what it finds after a kick
        time.sleep(0.5)
        fd = os.open(tmp_path / "kick", os.O_RDWR)
        woken.append(os.read(fd, 64))
        if json.loads((tmp_path / "policy.json").read_text())["doc"] == signed.document:
            (tmp_path / "result").write_text("applied 3\n")

    threading.Thread(target=apply_apps, daemon=True).start()
    link = Sent()
    agent.hand_over(link, {"doc": signed.document, "sig": signed.signature}, 3)
    assert link.messages == [("apps_applied", {"revision": 3})]
    assert woken and woken[0].startswith(b"\n")


def test_the_agent_says_ready_only_once_the_app_enforcer_is_active(agent, tmp_path, monkeypatch):
    """A template is saved when it says `ready`: saved with fapolicyd still starting (or failed),
    or before apply-apps listens, none of its clones could apply an allowlist."""
    monkeypatch.setattr(agent, "READY_FILE", tmp_path / "ready")
    monkeypatch.setattr(agent, "KICK", tmp_path / "kick")
    (tmp_path / "ready").write_text("firefox-esr\n")
    os.mkfifo(tmp_path / "kick", 0o600)
    states = iter([1, 3, 0])  # systemctl is-active: inactive, unknown, active
    monkeypatch.setattr(agent.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=next(states)))
    link = Sent()
    assert not agent.tell_ready(link)  # apply-apps does not listen yet
    reader = os.open(tmp_path / "kick", os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert not agent.tell_ready(link) and not agent.tell_ready(link) and link.messages == []
        assert agent.tell_ready(link)
    finally:
        os.close(reader)
    assert link.messages == [("ready", {"window": "firefox-esr"})]


def test_once_fapolicyd_is_active_its_process_is_watched_instead_of_asking_systemctl(agent, tmp_path, monkeypatch):
    monkeypatch.setattr(agent, "ENFORCER_PIDFILE", tmp_path / "fapolicyd.pid")
    monkeypatch.setattr(agent, "ENFORCER_PID", [])
    (tmp_path / "fapolicyd.pid").write_text(f"{os.getpid()}\n")
    asked: list[int] = []
    monkeypatch.setattr(agent.subprocess, "run", lambda *a, **k: asked.append(1) or SimpleNamespace(returncode=0))
    names = {os.getpid(): "fapolicyd"}
    monkeypatch.setattr(agent, "process_name", lambda pid: names.get(pid))
    assert agent.enforcer_active() and agent.enforcer_active() and len(asked) == 1
    names.clear()  # it died: systemctl is asked again
    assert agent.enforcer_active() and len(asked) == 2


def load_apply_apps():
    rootfs = AGENT.parents[1] / "recipes/agent-desktop/rootfs"
    loader = importlib.machinery.SourceFileLoader("apply_apps", str(rootfs / "usr/lib/shiftdesk/apply-apps"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


class FakeFapolicyd:
    """Reads its fifo as fapolicyd does and logs `Updated` for each reload it is asked for, but
    the first IGNORE (as if our journal reader had not been attached yet)."""

    def __init__(self, fifo: Path, ignore: int = 0) -> None:
        os.mkfifo(fifo, 0o660)
        self.fd = os.open(fifo, os.O_RDWR)
        self.lines: queue.Queue[str] = queue.Queue()
        self.asked, self.ignore = 0, ignore
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            for _ in range(os.read(self.fd, 64).count(b"1\n")):
                self.asked += 1
                if self.asked > self.ignore:
                    self.lines.put("Updated\n")

    def journal(self):
        yield "Starting to listen for events\n"
        while True:
            yield self.lines.get()


@pytest.fixture
def apply_apps(tmp_path, monkeypatch):
    """apply-apps with every file it touches under TMP_PATH, on a two-app catalogue."""
    module = load_apply_apps()
    for name, where in {"POLICY": "apps/policy.json", "RESULT": "ours/result", "KICK": "ours/kick",
                        "APPLIED": "lib/revision", "PINNED_KEY": "policy-key", "CATALOGUE": "apps.json",
                        "TRUST": "fapolicyd/trust.d/shiftdesk-apps.trust", "TINT2": "launcher/tint2rc",
                        "FAPOLICYD_FIFO": "fapolicyd.fifo"}.items():
        monkeypatch.setattr(module, name, tmp_path / where)
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(module, "TINT2_BASE", AGENT.parents[1] / "recipes/agent-desktop/rootfs/etc/shiftdesk/tint2rc")
    monkeypatch.setattr(module, "desktop_processes", lambda: [])
    monkeypatch.setattr(module.socket, "gethostname", lambda: NAME)
    (tmp_path / "apps.json").write_text(json.dumps({
        "firefox-esr": {"launcher": "/usr/share/shiftdesk/applications/browser.desktop",
                        "executables": ["/usr/lib/firefox-esr/firefox-esr"],
                        "trust": ["/usr/lib/firefox-esr/firefox-esr 10 " + "a" * 64]},
        "mousepad": {"launcher": "/usr/share/shiftdesk/applications/editor.desktop",
                     "executables": ["/usr/bin/mousepad"], "trust": ["/usr/bin/mousepad 20 " + "b" * 64]}}))
    (tmp_path / "policy-key").write_text(public_bytes(KEY).hex())
    (tmp_path / "fapolicyd/trust.d/shiftdesk-apps.trust").write_text("/usr/lib/firefox-esr/firefox-esr 10 " + "a" * 64
                                                                      + "\n")  # as the build writes it
    return module


def hand(apply_apps, revision: int, apps: set[str], key: Ed25519PrivateKey = KEY) -> None:
    """What the guest agent writes for apply-apps."""
    signed = sign(key, AppPolicy.of(NAME, revision, apps))
    apply_apps.POLICY.write_text(json.dumps({"doc": signed.document,
                                             "sig": base64.b64encode(signed.signature).decode()}))


def test_apply_apps_puts_a_signed_list_in_force_and_answers_the_same_list_at_once(apply_apps, tmp_path):
    fapolicyd = FakeFapolicyd(tmp_path / "fapolicyd.fifo")
    enforcer = apply_apps.Trust(apply_apps.Updates(fapolicyd.journal()))
    trust = tmp_path / "fapolicyd/trust.d/shiftdesk-apps.trust"
    hand(apply_apps, 3, {"mousepad"})
    apply_apps.answer(enforcer)
    assert apply_apps.RESULT.read_text() == "applied 3\n"
    assert trust.read_text() == "/usr/bin/mousepad 20 " + "b" * 64 + "\n" and fapolicyd.asked == 1
    assert [line for line in apply_apps.TINT2.read_text().splitlines() if line.startswith("launcher_item_app")] \
        == ["launcher_item_app = /usr/share/shiftdesk/applications/editor.desktop"]
    apply_apps.answer(enforcer)  # handed over again while the agent waited: in force already
    assert apply_apps.RESULT.read_text() == "applied 3\n" and fapolicyd.asked == 1

    before = trust.read_text()
    hand(apply_apps, 2, {"firefox-esr"})
    apply_apps.answer(enforcer)
    assert apply_apps.RESULT.read_text() == "refused 2 stale\n"
    hand(apply_apps, 4, {"firefox-esr"}, key=Ed25519PrivateKey.generate())
    apply_apps.answer(enforcer)
    assert apply_apps.RESULT.read_text() == "refused 4 bad-signature\n"
    assert trust.read_text() == before and fapolicyd.asked == 1


def test_a_reload_fapolicyd_did_not_report_is_asked_for_again(apply_apps, tmp_path, monkeypatch):
    monkeypatch.setattr(apply_apps, "REKICK_S", 0.2)
    fapolicyd = FakeFapolicyd(tmp_path / "fapolicyd.fifo", ignore=1)
    hand(apply_apps, 3, {"mousepad"})
    apply_apps.answer(apply_apps.Trust(apply_apps.Updates(fapolicyd.journal())))
    assert apply_apps.RESULT.read_text() == "applied 3\n" and fapolicyd.asked == 2


def test_apply_apps_answers_each_list_it_is_woken_for(apply_apps, tmp_path):
    fapolicyd = FakeFapolicyd(tmp_path / "fapolicyd.fifo")
    os.mkfifo(apply_apps.KICK, 0o620)
    trust = apply_apps.Trust(apply_apps.Updates(fapolicyd.journal()))
    threading.Thread(target=apply_apps.serve, args=(trust, apply_apps.kicks()), daemon=True).start()
    for revision, apps in ((3, {"mousepad"}), (5, {"firefox-esr", "mousepad"})):
        hand(apply_apps, revision, apps)
        fd = os.open(apply_apps.KICK, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"\n")
        os.close(fd)
        deadline = time.monotonic() + 10
        while not (apply_apps.RESULT.exists() and apply_apps.RESULT.read_text() == f"applied {revision}\n"):
            assert time.monotonic() < deadline, f"no answer about revision {revision}"
            time.sleep(0.02)
    assert fapolicyd.asked == 2


def test_a_list_that_needs_the_trust_fapolicyd_enforces_is_in_force_without_a_reload(apply_apps, tmp_path):
    """At its start apply-apps has fapolicyd reload the file as it finds it; after that, a list
    whose trust is the one enforced (the image's browser-only default, or the same apps under a
    new revision) needs no reload, and one that differs does."""
    fapolicyd = FakeFapolicyd(tmp_path / "fapolicyd.fifo")
    trust = apply_apps.Trust(apply_apps.Updates(fapolicyd.journal()))
    trust.load()
    assert fapolicyd.asked == 1
    hand(apply_apps, 3, {"firefox-esr"})  # the image's default
    apply_apps.answer(trust)
    assert apply_apps.RESULT.read_text() == "applied 3\n" and fapolicyd.asked == 1
    hand(apply_apps, 4, {"mousepad"})
    apply_apps.answer(trust)
    assert apply_apps.RESULT.read_text() == "applied 4\n" and fapolicyd.asked == 2
    hand(apply_apps, 5, {"mousepad"})  # another agent, the same apps
    apply_apps.answer(trust)
    assert apply_apps.RESULT.read_text() == "applied 5\n" and fapolicyd.asked == 2


@pytest.mark.parametrize(("states", "up"), [
    (["activating", "activating", "active"], True),  # a restart is waited out
    (["failed"], False),
    (["inactive"], False),
])
def test_apply_apps_answers_enforcer_down_instead_of_staying_silent(apply_apps, monkeypatch, states, up):
    """fapolicyd does not listen on its fifo (no fifo here): its unit says whether it comes back."""
    answers = iter(states)
    monkeypatch.setattr(apply_apps.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout=next(answers) + "\n"))
    monkeypatch.setattr(apply_apps.time, "sleep", lambda s: None)
    assert apply_apps.enforcer_up() is up
    if not up:
        with pytest.raises(apply_apps.Refused, match="enforcer-down"):
            answers = iter(states)
            apply_apps.reload_trust(apply_apps.Updates(iter(()), on_end=lambda: None))
        trust = apply_apps.Trust(apply_apps.Updates(iter(()), on_end=lambda: None))
        answers = iter(states)
        with pytest.raises(apply_apps.Refused, match="enforcer-down"):
            trust.enforce("/usr/bin/mousepad 20 " + "b" * 64 + "\n")
        assert trust.in_force is None  # not known: the next list reloads whatever it needs
