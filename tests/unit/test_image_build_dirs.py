"""images/build.py's work directories: a build killed mid-mmdebstrap leaves mounts inside its
directory; the next build unmounts them before deleting anything, and never deletes through one."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("image_build", ROOT / "images/build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def left_by_a_killed_build(parent: Path, precious: Path) -> Path:
    """A work directory as a SIGKILLed build leaves it: its owner gone, a host directory
    bind-mounted inside its root (as mmdebstrap mounts /dev there) and a tmpfs below that."""
    work = parent / f"{build.WORK_PREFIX}killed"
    (work / "rootfs/dev").mkdir(parents=True)
    (work / build.OWNER_FILE).write_text(str(dead_pid()))
    subprocess.run(["mount", "--bind", str(precious), str(work / "rootfs/dev")], check=True)
    (work / "rootfs/dev/shm").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(work / "rootfs/dev/shm")], check=True)
    return work


def test_a_dead_builds_mounts_are_unmounted_before_its_directory_goes(tmp_path):
    precious = tmp_path / "host-dev"
    precious.mkdir()
    (precious / "null").write_text("the host's own file")
    parent = tmp_path / "var-tmp"
    parent.mkdir()
    killed = left_by_a_killed_build(parent, precious)
    alive = parent / f"{build.WORK_PREFIX}running"
    alive.mkdir()
    (alive / build.OWNER_FILE).write_text(str(os.getpid()))
    try:
        with build.work_dir(parent) as work:
            assert (work / build.OWNER_FILE).read_text() == str(os.getpid())
            assert not killed.exists() and alive.exists()
        assert not work.exists()
        assert (precious / "null").read_text() == "the host's own file"  # nothing deleted through the mount
        assert build.mounts_under(parent) == []
    finally:
        for point in build.mounts_under(tmp_path):
            subprocess.run(["umount", "--lazy", str(point)], check=False)


def test_a_build_that_fails_leaves_nothing_mounted_or_behind(tmp_path):
    with pytest.raises(RuntimeError, match="mmdebstrap failed"), build.work_dir(tmp_path) as work:
        (work / "rootfs/proc").mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(work / "rootfs/proc")], check=True)
        raise RuntimeError("mmdebstrap failed")
    assert not work.exists() and build.mounts_under(tmp_path) == []
