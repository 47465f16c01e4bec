"""The golden-image build on real Debian packages: reproducible bytes, a manifest that tells all."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.conftest import ROOT


def build(out):
    subprocess.run([sys.executable, str(ROOT / "images/build.py"), str(ROOT / "images/recipes/busybox-desktop"),
                    str(out), "--cache", str(ROOT / ".cache/debs")], check=True, capture_output=True)
    return json.loads((out / "manifest.json").read_text())


def test_same_recipe_builds_the_same_bytes(tmp_path):
    first, second = build(tmp_path / "a"), build(tmp_path / "b")
    assert first["sha256"] == second["sha256"]
    assert (tmp_path / "a/disk.qcow2").read_bytes()[:4] == b"QFI\xfb"
    assert any(p.startswith("linux-image-") for p in first["packages"])
    assert "busybox-static" in first["packages"]
    assert "root=/dev/vda" in first["cmdline"]
