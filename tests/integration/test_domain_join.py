"""A real desktop on qemu:///system gets a computer account in the real (Samba) AD, receives its
one-time join secret at first boot, and the account disappears with the desktop."""

from __future__ import annotations

import hashlib
import re
import ssl
import subprocess

import ldap3

from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.services import desktops, pools
from controlplane.services.reconciler import Reconciler


def guest_file(overlay: str, path: str, tmp_path) -> str:
    """Read a file from the desktop's disk as the guest left it (journal replayed on a copy)."""
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", overlay, str(raw)], check=True)
    subprocess.run(["e2fsck", "-fy", str(raw)], capture_output=True, check=False)
    return subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True,
                          check=True).stdout


def test_desktop_joins_with_its_own_one_time_secret(real_ctx, real_settings, golden, ad, tmp_path):
    directory = LdapDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                              bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert),
                              computers_ou=ad.computers_ou, instance=real_settings.instance)
    real_ctx.directory = directory
    hv = real_ctx.hypervisor
    pools.create(real_ctx, name="joined", image="busybox-desktop", size=1, actor="test")
    rec = Reconciler(real_ctx)
    assert rec.run_until_converged(timeout=180)
    (row, _), = desktops.list_all(real_ctx)
    assert directory.list_computers() == {row.name}
    assert not hv.join_file(row.name).exists(), "the host must forget the secret once the guest has it"
    assert "s3cret" not in hv.serial_log(row.name).read_text()
    reported = re.search(r"SHIFTDESK-JOINED sha256=([0-9a-f]{16})", hv.serial_log(row.name).read_text())
    assert reported, "the guest did not receive a join secret"

    hv.destroy(row.name)
    secret = guest_file(row.disk_path, "/var/lib/shiftdesk/join-secret", tmp_path)
    assert hashlib.sha256(secret.encode()).hexdigest()[:16] == reported.group(1)
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(ad.dc.tls.ca_cert))
    server = ldap3.Server(ad.dc.url, use_ssl=True, tls=tls, get_info=ldap3.NONE)
    computer_dn = f"CN={directory.computer_name(row.name)},{ad.computers_ou}"
    assert ldap3.Connection(server, user=computer_dn, password=secret).bind(), \
        "the secret on the desktop's disk must be the computer account's live password"

    pools.delete(real_ctx, "joined", actor="test")
    assert rec.run_until_converged(timeout=180)
    rec.close()
    assert directory.list_computers() == set()
