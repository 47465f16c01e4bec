"""A throwaway Samba AD domain controller on loopback, and helpers to fill it through ldap3.

Provisioning takes a few seconds; the DC serves LDAP 389, LDAPS 636 and Kerberos 88 on
127.0.0.1 only, presenting a certificate signed by our local CA (so tests validate TLS for
real). Only one can run per machine (fixed ports): stale ones from a crashed run are killed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import ldap3

from controlplane.drivers.local_ca import ensure_server_cert

MARK = "shiftdesk-samba-"
STALE = Path("/run/shiftdesk-test-samba")  # holds the path of the running test DC's pid file


class SambaDC:
    realm = "SHIFTDESK.TEST"
    domain = "SHIFTDESK"
    base_dn = "DC=shiftdesk,DC=test"

    def __init__(self, root: Path) -> None:
        assert MARK in str(root), "the root path carries the marker used to find stale DCs"
        self.root = root
        self.conf = root / "etc" / "smb.conf"
        self.admin_password = "Adm-" + secrets.token_urlsafe(12) + "-9a"
        self.tls = ensure_server_cert(root / "tls", ["127.0.0.1", "localhost"])

    @property
    def url(self) -> str:
        return "ldaps://127.0.0.1:636"

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{self.base_dn}"

    def provision(self) -> None:
        subprocess.run(
            ["samba-tool", "domain", "provision", f"--realm={self.realm}", f"--domain={self.domain}",
             "--server-role=dc", "--dns-backend=NONE", "--use-rfc2307", f"--adminpass={self.admin_password}",
             f"--targetdir={self.root}", "--host-name=dc1", "--option=interfaces=lo",
             "--option=bind interfaces only=yes"],
            check=True, capture_output=True)
        (self.root / "run").mkdir(exist_ok=True)
        text = self.conf.read_text().replace("[global]\n", "[global]\n"
            f"\ttls enabled = yes\n\ttls keyfile = {self.tls.key}\n\ttls certfile = {self.tls.cert}\n"
            f"\ttls cafile = {self.tls.ca_cert}\n\tpid directory = {self.root / 'run'}\n", 1)
        self.conf.write_text(text)

    def start(self, timeout: float = 60) -> None:
        kill_stale()
        subprocess.run(["samba", "-s", str(self.conf), "-D"], check=True, capture_output=True)
        STALE.write_text(str(self.root / "run" / "samba.pid"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.admin().unbind()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.3)
        raise RuntimeError("samba did not come up")

    def stop(self) -> None:
        _terminate(self.root / "run" / "samba.pid")

    def admin(self) -> ldap3.Connection:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.tls.ca_cert))
        server = ldap3.Server(self.url, use_ssl=True, tls=tls, connect_timeout=3, get_info=ldap3.NONE)
        return ldap3.Connection(server, user=self.admin_dn, password=self.admin_password, auto_bind=True,
                                raise_exceptions=True, receive_timeout=10)

    # --- content -------------------------------------------------------------------------------

    def add_ou(self, conn: ldap3.Connection, name: str, parent: str | None = None) -> str:
        dn = f"OU={name},{parent or self.base_dn}"
        conn.add(dn, ["top", "organizationalUnit"], {"ou": name})
        return dn

    def add_user(self, conn: ldap3.Connection, ou: str, name: str, password: str, *,
                 disabled: bool = False, display: str | None = None) -> str:
        dn = f"CN={name},{ou}"
        conn.add(dn, ["top", "person", "organizationalPerson", "user"], {
            "cn": name, "sAMAccountName": name, "userPrincipalName": f"{name}@{self.realm.lower()}",
            "displayName": display or name, "userAccountControl": 0x202})
        conn.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]})
        conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [0x202 if disabled else 0x200])]})
        return dn

    def add_group(self, conn: ldap3.Connection, ou: str, name: str, members: list[str]) -> str:
        dn = f"CN={name},{ou}"
        attrs: dict = {"cn": name, "sAMAccountName": name, "groupType": -2147483646}
        if members:
            attrs["member"] = members
        conn.add(dn, ["top", "group"], attrs)
        return dn


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def kill_stale() -> None:
    """Stop a DC left by a crashed run (samba renames its processes, so go by the pid it wrote)."""
    if STALE.exists():
        _terminate(Path(STALE.read_text().strip()))


def _terminate(pid_file: Path) -> None:
    """SIGTERM the DC whose pid PID_FILE holds, wait for LDAPS to go away, forget the marker."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    for _ in range(100):
        if not _port_open(636):
            break
        time.sleep(0.1)
    STALE.unlink(missing_ok=True)
