"""Real libvirt fixtures: a throwaway installation tag, the real golden image, full cleanup."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

from controlplane.config import Settings
from controlplane.main import build_context
from controlplane.services import images

ROOT = Path(__file__).resolve().parents[2]


def libvirt_available() -> bool:
    return shutil.which("virsh") is not None and subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, check=False).returncode == 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.libvirt)


@pytest.fixture
def real_settings(tmp_path: Path) -> Settings:
    if not libvirt_available():
        pytest.fail("qemu:///system is not reachable: run scripts/setup-host.sh (make test does)")
    return Settings(data_dir=tmp_path / "data", instance=f"it{secrets.token_hex(3)}",
                    images_dir=ROOT / "images", cache_dir=ROOT / ".cache",
                    libvirt={"uri": "qemu:///system"},
                    reconciler={"boot_timeout_s": 120, "parallelism": 4})


@pytest.fixture
def real_ctx(real_settings: Settings):
    ctx = build_context(real_settings)
    yield ctx
    purge(real_settings)


@pytest.fixture
def golden(real_ctx):
    return images.build(real_ctx, "busybox-desktop", actor="test")


def tagged_domains(instance: str) -> list[str]:
    names = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                           capture_output=True, text=True, check=True).stdout.split()
    return [n for n in names if n.startswith(f"sd-{instance}-")]


def purge(settings: Settings) -> None:
    """Safety net after a test: remove whatever this installation left (tests assert before this)."""
    virsh = ["virsh", "-c", "qemu:///system"]
    for name in tagged_domains(settings.instance):
        subprocess.run([*virsh, "destroy", name], capture_output=True, check=False)
        subprocess.run([*virsh, "undefine", name], capture_output=True, check=False)
    subprocess.run([*virsh, "pool-destroy", settings.storage_pool], capture_output=True, check=False)
    subprocess.run([*virsh, "pool-undefine", settings.storage_pool], capture_output=True, check=False)
