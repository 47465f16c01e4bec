"""LdapDirectory: the Directory port on ldap3, written for Active Directory (and Samba AD).

Rules that matter for security, each enforced here and tested against a real Samba DC:
- TLS (LDAPS or StartTLS) with certificate validation against a configured CA file; plain
  LDAP only when explicitly allowed.
- A blank or whitespace password is refused before any bind: AD treats it as an
  unauthenticated bind that "succeeds".
- Every value put into a filter is escaped (RFC 4515), so `*)(cn=*` is just a strange name.
- Nested groups come from LDAP_MATCHING_RULE_IN_CHAIN, evaluated by the DC. Each group is
  reported by its canonical DN and its objectSid, never by cn (anyone may reuse a cn in
  another OU; see domain/groups.py).
- Referrals are never chased: a referral would make ldap3 connect, and bind with the same
  credentials, to whatever host the referral names.
- Every refusal costs the same LDAP work: an unknown, ambiguous, disabled or locked account
  still gets one bind (as a DN that cannot exist, with the offered password), so response time
  does not tell which accounts exist.
- Disabled and locked accounts are refused even with the right password.
- One service connection is reused (under a lock) and reopened when it breaks; every
  network call has a timeout; an unreachable DC is a TemporaryError (HTTP 503).
"""

from __future__ import annotations

import hashlib
import secrets
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import ldap3
from ldap3.core import exceptions as lx
from ldap3.utils.conv import escape_filter_chars

from controlplane.domain.groups import group_ref, sid_text
from controlplane.domain.ports import Identity
from controlplane.errors import AuthFailed, PermanentError, TemporaryError

IN_CHAIN = "1.2.840.113556.1.4.1941"
UF_ACCOUNTDISABLE = 0x2
UF_LOCKOUT = 0x10
UF_WORKSTATION_TRUST_ACCOUNT = 0x1000
USER_ATTRS = ["sAMAccountName", "displayName", "userAccountControl", "lockoutTime",
              "msDS-User-Account-Control-Computed"]
MAX_USERNAME = 256
T = TypeVar("T")


class LdapDirectory:
    def __init__(self, *, url: str, base_dn: str, bind_dn: str, bind_password: str, ca_file: str | None,
                 allow_plain: bool = False, start_tls: bool = False, computers_ou: str | None = None,
                 instance: str = "main", connect_timeout: float = 5.0, receive_timeout: float = 10.0) -> None:
        self.base_dn = base_dn
        self.bind_dn = bind_dn
        self._bind_password = bind_password
        self.computers_ou = computers_ou
        self.manages_computers = bool(computers_ou)
        self.instance = instance
        self.start_tls = start_tls
        self.receive_timeout = max(1, int(receive_timeout))  # ldap3 packs it into SO_RCVTIMEO as an int
        use_ssl = url.lower().startswith("ldaps://")
        if not (use_ssl or start_tls or allow_plain):
            raise PermanentError("ldap.url: plain LDAP refused; use ldaps:// or start_tls, or set allow_plain")
        tls = None
        if use_ssl or start_tls:
            if not ca_file:
                raise PermanentError("ldap.ca_file: required to validate the directory's certificate")
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)
        self.server = ldap3.Server(url, use_ssl=use_ssl, tls=tls, connect_timeout=connect_timeout,
                                   get_info=ldap3.NONE)
        self._conn: ldap3.Connection | None = None
        self._lock = threading.Lock()
        # binds for refused accounts go here: random per process, so nobody can create it
        self._decoy_dn = f"CN=shiftdesk-decoy-{secrets.token_hex(16)},{base_dn}"

    # --- connections -------------------------------------------------------------------------

    def _open(self, user: str, password: str) -> ldap3.Connection:
        conn = ldap3.Connection(self.server, user=user, password=password, receive_timeout=self.receive_timeout,
                                raise_exceptions=False, read_only=False, auto_referrals=False)
        try:
            conn.open()
            if self.start_tls:
                conn.start_tls()
            conn.bind()
        except (lx.LDAPSocketOpenError, lx.LDAPSocketReceiveError, lx.LDAPSessionTerminatedByServerError,
                lx.LDAPSocketSendError, lx.LDAPStartTLSError, ssl.SSLError) as err:
            raise TemporaryError(f"directory unreachable: {type(err).__name__}", delay=5.0) from err
        return conn

    def _service(self, work: Callable[[ldap3.Connection], T]) -> T:
        """Run WORK on the shared service connection, reopening it once if it broke."""
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed or not self._conn.bound:
                    self._conn = self._open(self.bind_dn, self._bind_password)
                    if not self._conn.bound:
                        self._conn = None
                        raise PermanentError("ldap.bind_dn: the service account cannot bind")
                try:
                    return work(self._conn)
                except (lx.LDAPSocketReceiveError, lx.LDAPSocketSendError, lx.LDAPSessionTerminatedByServerError,
                        lx.LDAPSocketOpenError) as err:
                    self._conn = None
                    if attempt == 2:
                        raise TemporaryError(f"directory unreachable: {type(err).__name__}", delay=5.0) from err
        raise AssertionError("unreachable")

    # --- users -------------------------------------------------------------------------------

    def _find_user(self, conn: ldap3.Connection, username: str) -> dict[str, Any] | None:
        value = escape_filter_chars(username)
        query = f"(&(objectCategory=person)(objectClass=user)(|(sAMAccountName={value})(userPrincipalName={value})))"
        conn.search(self.base_dn, query, attributes=USER_ATTRS, size_limit=2)
        entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        if len(entries) != 1:
            return None  # unknown, or ambiguous: never guess
        return {"dn": entries[0]["dn"], **{k: _one(v) for k, v in entries[0]["attributes"].items()}}

    def _groups(self, conn: ldap3.Connection, dn: str) -> frozenset[str]:
        """Every group DN is in, nested ones included, as canonical DNs and SIDs."""
        query = f"(&(objectClass=group)(member:{IN_CHAIN}:={escape_filter_chars(dn)}))"
        conn.search(self.base_dn, query, attributes=["objectSid"])
        refs: set[str] = set()
        for e in conn.response or []:
            if e.get("type") != "searchResEntry":
                continue
            refs.add(group_ref(e["dn"]))
            sid = (e.get("raw_attributes") or {}).get("objectSid") or []
            if sid:
                refs.add(sid_text(bytes(sid[0])))
        return frozenset(refs)

    def _identity(self, conn: ldap3.Connection, entry: dict[str, Any]) -> Identity:
        return Identity(username=str(entry["sAMAccountName"]), dn=entry["dn"],
                        display_name=str(entry.get("displayName") or entry["sAMAccountName"]),
                        groups=self._groups(conn, entry["dn"]), enabled=_enabled(entry))

    def lookup(self, username: str) -> Identity | None:
        _check_username(username)

        def work(conn: ldap3.Connection) -> Identity | None:
            entry = self._find_user(conn, username)
            return self._identity(conn, entry) if entry else None

        return self._service(work)

    def authenticate(self, username: str, password: str) -> Identity:
        if not isinstance(password, str) or not password.strip():
            raise AuthFailed("blank password refused before any bind")
        _check_username(username)
        entry = self._service(lambda conn: self._find_user(conn, username))
        refusal = _refusal(entry)
        bound = self._bind_once(entry["dn"] if entry is not None and refusal is None else self._decoy_dn, password)
        if refusal is not None or entry is None:
            raise AuthFailed(refusal or "unknown user")
        if not bound:
            raise AuthFailed("wrong password")
        return self._service(lambda conn: self._identity(conn, entry))

    def _bind_once(self, dn: str, password: str) -> bool:
        """One simple bind on a fresh connection: the same cost whether DN exists or not."""
        user_conn = self._open(dn, password)
        try:
            return bool(user_conn.bound)
        finally:
            user_conn.unbind()

    # --- computer accounts (offline domain join) ---------------------------------------------

    def computer_name(self, desktop: str) -> str:
        """sAMAccountName is at most 15 characters: a stable hash of the desktop name."""
        return "sd" + hashlib.sha256(desktop.encode()).hexdigest()[:12]

    def _tag(self, desktop: str) -> str:
        return f"shiftdesk:{self.instance}:{desktop}"

    def set_computer(self, desktop: str) -> str:
        if not self.computers_ou:
            raise PermanentError("ldap.computers_ou: not configured")
        name = self.computer_name(desktop)
        dn = f"CN={name},{self.computers_ou}"
        secret = secrets.token_urlsafe(32)
        encoded = f'"{secret}"'.encode("utf-16-le")

        def work(conn: ldap3.Connection) -> None:
            conn.search(self.computers_ou, f"(sAMAccountName={escape_filter_chars(name)}$)", attributes=["cn"])
            exists = any(e.get("type") == "searchResEntry" for e in conn.response or [])
            if not exists:
                ok = conn.add(dn, ["top", "person", "organizationalPerson", "user", "computer"], {
                    "cn": name, "sAMAccountName": f"{name}$", "description": self._tag(desktop),
                    "userAccountControl": UF_WORKSTATION_TRUST_ACCOUNT | UF_ACCOUNTDISABLE,
                })
                if not ok:
                    raise PermanentError(f"create computer {name}: {conn.result.get('description')}")
            if not conn.modify(dn, {"unicodePwd": [(ldap3.MODIFY_REPLACE, [encoded])],
                                    "userAccountControl": [(ldap3.MODIFY_REPLACE, [UF_WORKSTATION_TRUST_ACCOUNT])]}):
                raise PermanentError(f"set secret of computer {name}: {conn.result.get('description')}")

        self._service(work)
        return secret

    def delete_computer(self, desktop: str) -> None:
        if not self.computers_ou:
            return
        dn = f"CN={self.computer_name(desktop)},{self.computers_ou}"

        def work(conn: ldap3.Connection) -> None:
            if not conn.delete(dn) and conn.result.get("result") != 32:  # 32: noSuchObject = already gone
                raise PermanentError(f"delete computer of {desktop}: {conn.result.get('description')}")

        self._service(work)

    def list_computers(self) -> set[str]:
        if not self.computers_ou:
            return set()
        prefix = f"shiftdesk:{self.instance}:"

        def work(conn: ldap3.Connection) -> set[str]:
            query = f"(&(objectClass=computer)(description={escape_filter_chars(prefix)}*))"
            conn.search(self.computers_ou, query, attributes=["description"])
            found = set()
            for e in conn.response or []:
                if e.get("type") != "searchResEntry":
                    continue
                desc = _one(e["attributes"].get("description"))
                if isinstance(desc, str) and desc.startswith(prefix):
                    found.add(desc[len(prefix):])
            return found

        return self._service(work)


def _one(value: Any) -> Any:
    """Without the schema (get_info=NONE) ldap3 returns every attribute as a list."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _refusal(entry: dict[str, Any] | None) -> str | None:
    """Why this account may not sign in whatever the password (for the audit log), or None."""
    if entry is None:
        return "unknown user"
    if int(entry.get("userAccountControl") or 0) & UF_ACCOUNTDISABLE:
        return "account disabled"
    if int(entry.get("msDS-User-Account-Control-Computed") or 0) & UF_LOCKOUT:
        return "account locked"
    return None


def _check_username(username: str) -> None:
    if not isinstance(username, str) or not username or len(username) > MAX_USERNAME:
        raise AuthFailed("malformed username")
    if any(ord(c) < 32 or ord(c) == 127 for c in username):
        raise AuthFailed("control character in username")


def _enabled(entry: dict[str, Any]) -> bool:
    """Neither disabled nor locked out (what `authenticate` refuses, seen without a password)."""
    uac = int(entry.get("userAccountControl") or 0)
    computed = int(entry.get("msDS-User-Account-Control-Computed") or 0)
    return not (uac & UF_ACCOUNTDISABLE or computed & UF_LOCKOUT)
