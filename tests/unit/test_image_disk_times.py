"""images/build.py's disk: the same tree gives the same bytes whoever reads it before mkfs."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("image_build", ROOT / "images/build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

pytestmark = pytest.mark.skipif(not (shutil.which("mkfs.ext4") and shutil.which("debugfs")
                                     and shutil.which("qemu-img")), reason="needs e2fsprogs and qemu-img")


def disk_of(tree: Path, work: Path) -> str:
    work.mkdir()
    out = work / "disk.qcow2"
    build.make_disk(work, tree, {"name": "times", "disk_mib": 16}, out, [])
    return hashlib.sha256(out.read_bytes()).hexdigest()


def test_a_tree_read_between_its_pinning_and_mkfs_gives_the_same_disk(tmp_path):
    """A `find` over /var/tmp while a build ran moved 1,927 directories' access times between
    `pin_times` and mkfs (which copies them): two builds of the same packages differed."""
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/file").write_text("same bytes\n")
    build.pin_times(tree)
    first = disk_of(tree, tmp_path / "a")
    later = time.time()
    for path in (tree / "usr", tree / "usr/lib", tree / "usr/lib/file"):  # as a reader on relatime does
        os.utime(path, (later, build.EPOCH), follow_symlinks=False)
    assert disk_of(tree, tmp_path / "b") == first
