"""The golden-image builds on real Debian packages: reproducible bytes, a manifest that tells all."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest

from controlplane.drivers.image_builder import ScriptImageBuilder
from tests.integration.conftest import ROOT

AGENT = ROOT / "images/recipes/agent-desktop"
TERMINALS = {"xterm", "rxvt-unicode", "gnome-terminal", "konsole", "xfce4-terminal", "lxterminal", "sakura",
             "terminator", "tilix", "kitty", "alacritty", "st", "stterm", "mate-terminal", "qterminal", "eterm"}


def build(out, recipe="busybox-desktop"):
    subprocess.run([sys.executable, str(ROOT / "images/build.py"), str(ROOT / "images/recipes" / recipe),
                    str(out), "--cache", str(ROOT / ".cache/debs")], check=True, capture_output=True)
    return json.loads((out / "manifest.json").read_text())


def test_same_recipe_builds_the_same_bytes(tmp_path):
    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a/disk.qcow2").read_bytes()[:4] == b"QFI\xfb"
    assert any(p.startswith("linux-image-") for p in first["packages"])
    assert "busybox-static" in first["packages"]
    assert "root=/dev/vda" in first["cmdline"]
    assert (first["readiness"], first["memory_mib"], first["vcpus"]) == ("serial", 256, 1)


def inputs_digest() -> str:
    """Everything the agent desktop is built from that lives in this repo (package versions are
    compared separately): a cached build made from other inputs is not worth comparing with."""
    digest = hashlib.sha256()
    files = [ROOT / "images/build.py", ROOT / "images/guest-agent/shiftdesk-guest-agent",
             ROOT / "controlplane/domain/guest_channel.py", *sorted(p for p in AGENT.rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def cached_agent_build(fresh: dict) -> dict:
    """Another build of the same inputs: the image builder's own (the e2e agent desktop made it
    earlier in this run, or a run before did), else the one kept in .cache/images, remade when its
    inputs or package versions differ from the fresh one's (so a green run always compares two
    builds of the same things, and CI builds the agent desktop twice, not three times)."""
    builder = ScriptImageBuilder(images_dir=ROOT / "images", cache_dir=ROOT / ".cache")
    shared = ROOT / ".cache/builds" / f"agent-desktop-{builder.inputs_digest(AGENT)}" / "manifest.json"
    if shared.is_file() and (kept := json.loads(shared.read_text()))["packages"] == fresh["packages"]:
        return kept
    cache = ROOT / ".cache/images/agent-desktop"
    stamp = cache / "inputs.sha256"
    if cache.is_dir() and stamp.is_file() and stamp.read_text() == inputs_digest():
        kept = json.loads((cache / "manifest.json").read_text())
        if kept["packages"] == fresh["packages"]:
            return kept
    shutil.rmtree(cache, ignore_errors=True)
    digest = inputs_digest()
    kept = build(cache, "agent-desktop")
    stamp.write_text(digest)
    return kept


def image_listing(disk, path: str, tmp_path) -> str:
    raw = tmp_path / "disk.raw"
    if not raw.exists():
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(disk), str(raw)], check=True)
    done = subprocess.run(["debugfs", "-R", f"ls -l {path}", str(raw)], check=True, capture_output=True, text=True)
    return done.stdout


@pytest.mark.timeout(1800)
def test_agent_desktop_builds_reproducibly_with_firefox_and_no_terminal(tmp_path):
    fresh = build(tmp_path / "fresh", "agent-desktop")
    kept = cached_agent_build(fresh)
    assert fresh["sha256"] == kept["sha256"]
    assert fresh["readiness"] == "channel" and fresh["memory_mib"] >= 1024 and fresh["vcpus"] >= 1
    packages = fresh["packages"]
    assert "firefox-esr" in packages and "linux-image-amd64" in packages
    assert {"mousepad", "galculator", "fonts-wqy-microhei", "python3"} <= set(packages)
    assert not TERMINALS & set(packages)
    assert "sudo" not in packages
    alternatives = image_listing(tmp_path / "fresh/disk.qcow2", "/etc/alternatives", tmp_path)
    assert "x-terminal-emulator" not in alternatives
    assert "policies.json" in image_listing(tmp_path / "fresh/disk.qcow2", "/etc/firefox-esr/policies", tmp_path)
