"""The image builder keeps a finished build and reuses it while its inputs are the same."""

from __future__ import annotations

import json

from controlplane.drivers.image_builder import ScriptImageBuilder

FAKE_BUILD = """
import json, sys, pathlib
recipe, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
runs = pathlib.Path(sys.argv[4]).parent / "runs"
runs.parent.mkdir(parents=True, exist_ok=True)
runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
(out / "disk.qcow2").write_bytes(b"QFI\\xfb" + (recipe / "recipe.json").read_bytes())
(out / "manifest.json").write_text(json.dumps({"recipe": recipe.name}))
"""


def builder(tmp_path):
    images = tmp_path / "images"
    (images / "recipes" / "demo-desktop").mkdir(parents=True)
    (images / "recipes" / "demo-desktop" / "recipe.json").write_text('{"name": "demo-desktop"}')
    (images / "build.py").write_text(FAKE_BUILD)
    return ScriptImageBuilder(images_dir=images, cache_dir=tmp_path / "cache"), images


def test_a_second_build_of_the_same_inputs_is_the_kept_one_and_a_change_builds_again(tmp_path):
    b, images = builder(tmp_path)
    first = b.build("demo-desktop", tmp_path / "out1")
    second = b.build("demo-desktop", tmp_path / "out2")
    assert first == second == json.loads((tmp_path / "out2/manifest.json").read_text())
    assert (tmp_path / "out2/disk.qcow2").read_bytes() == (tmp_path / "out1/disk.qcow2").read_bytes()
    assert (tmp_path / "cache/runs").read_text() == "x"  # built once
    (images / "recipes" / "demo-desktop" / "recipe.json").write_text('{"name": "demo-desktop", "v": 2}')
    b.build("demo-desktop", tmp_path / "out3")
    assert (tmp_path / "cache/runs").read_text() == "xx"
    assert len(list((tmp_path / "cache/builds").iterdir())) == 1  # only the newest build is kept
