"""Real libvirt fixtures: a throwaway installation tag, the real golden image, full cleanup."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ldap3
import pytest

from controlplane.config import Settings
from controlplane.domain import naming
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.main import build_context
from controlplane.services import images
from tests.conftest import database_for
from tests.integration.samba import SambaDC

ROOT = Path(__file__).resolve().parents[2]


def libvirt_available() -> bool:
    return shutil.which("virsh") is not None and subprocess.run(
        ["virsh", "-c", "qemu:///system", "version"], capture_output=True, check=False).returncode == 0


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.libvirt)


@pytest.fixture
def real_settings(request: pytest.FixtureRequest) -> Iterator[Settings]:
    """Settings for a real installation; its database is PostgreSQL when the run asks for it
    (SHIFTDESK_TEST_DB=postgresql, tests/conftest.py), else SQLite in DATA_DIR."""
    if not libvirt_available():
        pytest.fail("qemu:///system is not reachable: run scripts/setup-host.sh (make test does)")
    # QEMU runs as libvirt-qemu: it must be able to search the path to DATA_DIR, and pytest's own
    # tmp_path sits under a 0700 directory. DATA_DIR itself stays root's (see drivers/libvirt/host_access.py).
    parent = Path(tempfile.mkdtemp(prefix="shiftdesk-it-", dir="/var/tmp"))
    parent.chmod(0o711)
    yield Settings(data_dir=parent / "data", instance=f"it{secrets.token_hex(3)}",
                   images_dir=ROOT / "images", cache_dir=ROOT / ".cache",
                   libvirt={"uri": "qemu:///system"},
                   reconciler={"boot_timeout_s": 600, "parallelism": 4}, db=database_for(request))
    shutil.rmtree(parent, ignore_errors=True)


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
    return [n for n in names if n.startswith(naming.domain_prefixes(instance))]


def purge(settings: Settings) -> None:
    """Safety net after a test: remove whatever this installation left (tests assert before this)."""
    virsh = ["virsh", "-c", "qemu:///system"]
    for name in tagged_domains(settings.instance):
        subprocess.run([*virsh, "destroy", name], capture_output=True, check=False)
        subprocess.run([*virsh, "undefine", name], capture_output=True, check=False)
    subprocess.run([*virsh, "pool-destroy", settings.storage_pool], capture_output=True, check=False)
    subprocess.run([*virsh, "pool-undefine", settings.storage_pool], capture_output=True, check=False)


# --- a real Active Directory (Samba AD DC) ---------------------------------------------------------


class AD:
    """The test domain: OUs, users (alice active, dave disabled, erin for lockout, carol admin),
    nested groups (alice in cc-sales-team in cc-agents), a service account, a computers OU.
    `groups` maps each group's cn to its DN: configuration names groups by DN (or SID), never by cn."""

    def __init__(self, dc) -> None:
        self.dc = dc
        self.passwords = {"alice": "Alice-Pass-1234!", "bob": "Bob-Pass-1234!!", "carol": "Carol-Pass-1234!",
                          "dave": "Dave-Pass-1234!", "erin": "Erin-Pass-1234!",
                          "svc": "Svc-" + secrets.token_hex(8) + "-Aa1!"}
        conn = dc.connect()
        root = dc.add_ou(conn, "ShiftDesk")
        self.users_ou = dc.add_ou(conn, "Agents", root)
        self.computers_ou = dc.add_ou(conn, "Desktops", root)
        self.dns = {}
        for name, display in (("alice", "Alice Agent"), ("bob", "Bob Agent"), ("carol", "Carol Admin"),
                              ("erin", "Erin Agent")):
            self.dns[name] = dc.add_user(conn, self.users_ou, name, self.passwords[name], display=display)
        self.dns["dave"] = dc.add_user(conn, self.users_ou, "dave", self.passwords["dave"], disabled=True)
        self.svc_dn = dc.add_user(conn, self.users_ou, "svc-shiftdesk", self.passwords["svc"])
        team = dc.add_group(conn, self.users_ou, "cc-sales-team", [self.dns["alice"], self.dns["dave"]])
        self.groups = {"cc-sales-team": team,
                       "cc-agents": dc.add_group(conn, self.users_ou, "cc-agents", [team, self.dns["erin"]]),
                       "cc-support": dc.add_group(conn, self.users_ou, "cc-support", [self.dns["bob"]]),
                       "cc-admins": dc.add_group(conn, self.users_ou, "cc-admins", [self.dns["carol"]])}
        # delegate computer-object management in the Desktops OU to the service account
        conn.modify(f"CN=Account Operators,CN=Builtin,{dc.base_dn}",
                    {"member": [(ldap3.MODIFY_ADD, [self.svc_dn])]})
        conn.unbind()
        self.directory = LdapDirectory(url=dc.url, base_dn=dc.base_dn, bind_dn=self.svc_dn,
                                       bind_password=self.passwords["svc"], ca_file=str(dc.tls.ca_cert),
                                       computers_ou=self.computers_ou, instance="it")


@pytest.fixture(scope="session")
def ad(tmp_path_factory):
    if shutil.which("samba-tool") is None:
        pytest.fail("Samba is not installed: run scripts/setup-host.sh (make test does)")
    dc = SambaDC(tmp_path_factory.mktemp("shiftdesk-samba-"))
    dc.provision()
    dc.start()
    try:
        yield AD(dc)
    finally:
        dc.stop()
