"""A Samba AD domain controller of our own, on loopback: the demo domain of `make run` and the
test suites' real AD.

Provisioning takes about ten seconds (`samba-tool domain provision`, no DNS, no other network).
The DC serves LDAP 389, LDAPS 636 and Kerberos 88 on 127.0.0.1 only (`interfaces = lo`), and
presents a certificate signed by the local CA in ROOT/tls, so clients validate TLS for real.
Everything it keeps is under ROOT, including the Administrator password (ROOT/admin.secret,
0600), so a stopped DC starts again with its content. The ports are fixed: one DC per network
namespace; `start` refuses, saying so, when something already answers on 636.

`SambaAdmin` fills the directory through LDAPS (the DirectoryAdmin port): every step is
idempotent, so filling an existing domain again changes only what differs.
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
from ldap3.core import exceptions as lx

from controlplane.drivers.local_ca import ServerFiles, ensure_server_cert
from controlplane.private_files import write_private

LDAPS_PORT = 636
UF_NORMAL_ACCOUNT = 0x200
UF_ACCOUNTDISABLE = 0x2
GLOBAL_SECURITY_GROUP = -2147483646


class SambaError(RuntimeError):
    """The DC could not be provisioned or started (the message says which step and why)."""


class SambaDC:
    def __init__(self, root: Path, *, realm: str = "SHIFTDESK.TEST", domain: str = "SHIFTDESK") -> None:
        self.root = root
        self.realm = realm
        self.domain = domain
        self.base_dn = ",".join(f"DC={part}" for part in realm.lower().split("."))
        self.conf = root / "etc" / "smb.conf"
        self.pid_file = root / "run" / "samba.pid"
        self._secret = root / "admin.secret"
        self.tls: ServerFiles = ensure_server_cert(root / "tls", ["127.0.0.1", "localhost"])

    @property
    def url(self) -> str:
        return f"ldaps://127.0.0.1:{LDAPS_PORT}"

    @property
    def admin_dn(self) -> str:
        return f"CN=Administrator,CN=Users,{self.base_dn}"

    @property
    def admin_password(self) -> str:
        return self._secret.read_text().strip()

    @property
    def provisioned(self) -> bool:
        return self.conf.exists() and self._secret.exists()

    def provision(self) -> None:
        """Create the domain under ROOT (once: a provisioned ROOT is left as it is)."""
        if self.provisioned:
            return
        password = "Adm-" + secrets.token_urlsafe(12) + "-9a"  # AD's complexity rule: three classes
        run = subprocess.run(
            ["samba-tool", "domain", "provision", f"--realm={self.realm}", f"--domain={self.domain}",
             "--server-role=dc", "--dns-backend=NONE", "--use-rfc2307", f"--adminpass={password}",
             f"--targetdir={self.root}", "--host-name=dc1", "--option=interfaces=lo",
             "--option=bind interfaces only=yes"],
            capture_output=True, text=True, check=False)
        if run.returncode != 0:  # the password is in argv, never in the output
            raise SambaError(f"samba-tool domain provision failed: {run.stderr.strip()[-500:]}")
        (self.root / "run").mkdir(exist_ok=True)
        text = self.conf.read_text().replace("[global]\n", "[global]\n"
            f"\ttls enabled = yes\n\ttls keyfile = {self.tls.key}\n\ttls certfile = {self.tls.cert}\n"
            f"\ttls cafile = {self.tls.ca_cert}\n\tpid directory = {self.root / 'run'}\n", 1)
        self.conf.write_text(text)
        write_private(self._secret, password + "\n")

    def running(self) -> bool:
        """Our DC's process is alive (by the pid it wrote; samba renames its processes)."""
        try:
            os.kill(int(self.pid_file.read_text().strip()), 0)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return False
        return True

    def start(self, timeout: float = 60) -> None:
        """Start the DC as a daemon and wait until the Administrator can bind over LDAPS."""
        if self.running():
            return
        if port_open(LDAPS_PORT):
            raise SambaError(f"something already serves 127.0.0.1:{LDAPS_PORT} (another Samba DC: the test "
                             "suite's or a `make run` demo; stop it first)")
        run = subprocess.run(["samba", "-s", str(self.conf), "-D"], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise SambaError(f"samba did not start: {run.stderr.strip()[-500:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.connect().unbind()
                return
            except lx.LDAPException:
                time.sleep(0.3)
        raise SambaError(f"samba did not answer on LDAPS within {timeout:.0f} s")

    def stop(self) -> None:
        terminate(self.pid_file)

    def connect(self) -> ldap3.Connection:
        """An LDAPS connection bound as the domain's Administrator."""
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.tls.ca_cert))
        server = ldap3.Server(self.url, use_ssl=True, tls=tls, connect_timeout=3, get_info=ldap3.NONE)
        return ldap3.Connection(server, user=self.admin_dn, password=self.admin_password, auto_bind=True,
                                raise_exceptions=True, receive_timeout=10)

    # --- content (the tests' helpers: they take an open connection) ---------------------------------

    def add_ou(self, conn: ldap3.Connection, name: str, parent: str | None = None) -> str:
        dn = f"OU={name},{parent or self.base_dn}"
        with contextlib.suppress(lx.LDAPEntryAlreadyExistsResult):
            conn.add(dn, ["top", "organizationalUnit"], {"ou": name})
        return dn

    def add_user(self, conn: ldap3.Connection, ou: str, name: str, password: str, *,
                 disabled: bool = False, display: str | None = None) -> str:
        dn = f"CN={name},{ou}"
        with contextlib.suppress(lx.LDAPEntryAlreadyExistsResult):
            conn.add(dn, ["top", "person", "organizationalPerson", "user"], {
                "cn": name, "sAMAccountName": name, "userPrincipalName": f"{name}@{self.realm.lower()}",
                "displayName": display or name, "userAccountControl": UF_NORMAL_ACCOUNT | UF_ACCOUNTDISABLE})
        conn.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [f'"{password}"'.encode("utf-16-le")])]})
        flags = UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if disabled else 0)
        conn.modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [flags])]})
        return dn

    def add_group(self, conn: ldap3.Connection, ou: str, name: str, members: list[str]) -> str:
        dn = f"CN={name},{ou}"
        try:
            conn.add(dn, ["top", "group"], {"cn": name, "sAMAccountName": name, "groupType": GLOBAL_SECURITY_GROUP,
                                            **({"member": members} if members else {})})
        except lx.LDAPEntryAlreadyExistsResult:
            for member in members:
                with contextlib.suppress(lx.LDAPEntryAlreadyExistsResult, lx.LDAPAttributeOrValueExistsResult):
                    conn.modify(dn, {"member": [(ldap3.MODIFY_ADD, [member])]})
        return dn

    def add_to_builtin(self, conn: ldap3.Connection, group: str, member: str) -> None:
        """Put MEMBER in a builtin group (Account Operators lets a service account manage computers)."""
        with contextlib.suppress(lx.LDAPEntryAlreadyExistsResult, lx.LDAPAttributeOrValueExistsResult):
            conn.modify(f"CN={group},CN=Builtin,{self.base_dn}", {"member": [(ldap3.MODIFY_ADD, [member])]})


class SambaAdmin:
    """The DirectoryAdmin port on a SambaDC: one Administrator connection, idempotent steps."""

    def __init__(self, dc: SambaDC) -> None:
        self.dc = dc
        self.base_dn = dc.base_dn
        self.url = dc.url
        self.ca_file = str(dc.tls.ca_cert)
        self._conn = dc.connect()

    def ensure_ou(self, name: str, parent: str | None = None) -> str:
        return self.dc.add_ou(self._conn, name, parent)

    def ensure_user(self, ou: str, name: str, password: str, *, display: str) -> str:
        return self.dc.add_user(self._conn, ou, name, password, display=display)

    def ensure_group(self, ou: str, name: str, members: list[str]) -> str:
        return self.dc.add_group(self._conn, ou, name, members)

    def delegate_computers(self, account_dn: str) -> None:
        self.dc.add_to_builtin(self._conn, "Account Operators", account_dn)

    def close(self) -> None:
        self._conn.unbind()


def terminate(pid_file: Path) -> None:
    """SIGTERM the DC whose pid PID_FILE holds and wait (up to 10 s) until LDAPS is gone."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
    for _ in range(100):
        if not port_open(LDAPS_PORT):
            return
        time.sleep(0.1)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
