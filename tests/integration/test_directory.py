"""The directory driver against a real Samba AD DC (see samba.py): login, groups, refusals."""

from __future__ import annotations

import contextlib

import pytest

from controlplane.domain.groups import group_ref, sid_text
from controlplane.drivers.ldap.directory import LdapDirectory
from controlplane.errors import AuthFailed, PermanentError, TemporaryError


def test_login_returns_nested_groups_by_dn_and_sid(ad):
    who = ad.directory.authenticate("alice", ad.passwords["alice"])
    assert who.username == "alice" and who.display_name == "Alice Agent"
    dns = {group_ref(ad.groups[cn]) for cn in ("cc-sales-team", "cc-agents")}
    assert dns <= who.groups, "nested membership must be resolved"
    assert group_ref(ad.groups["cc-admins"]) not in who.groups
    assert not {"cc-sales-team", "cc-agents"} & who.groups, "never by cn"
    sids = {g for g in who.groups if g.startswith("s-1-5-21-")}
    assert len(sids) == 2 and sids == {sid_of(ad, ad.groups[cn]) for cn in ("cc-sales-team", "cc-agents")}


def sid_of(ad, dn):
    conn = ad.dc.connect()
    conn.search(dn, "(objectClass=*)", search_scope="BASE", attributes=["objectSid"])
    raw = conn.response[0]["raw_attributes"]["objectSid"][0]
    conn.unbind()
    return sid_text(raw)


class CountingDirectory(LdapDirectory):
    """Counts the connections (each one bind) an authentication opens besides the service one."""

    binds: list[str]

    def _bind_once(self, dn: str, password: str) -> bool:
        self.binds.append(dn)
        return super()._bind_once(dn, password)


@pytest.mark.parametrize("user,password", [
    ("alice", "wrong-password-1A"), ("nobody", "wrong-password-1A"), ("dave", "Dave-Pass-1234!"),
    ("alice", "Alice-Pass-1234!")])
def test_every_refusal_costs_one_bind_like_a_wrong_password(ad, user, password):
    """Unknown, disabled and known users go through the same LDAP work (a timing oracle would
    otherwise say which accounts exist: bench/login_timing.py measures it)."""
    d = CountingDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                          bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert))
    d.binds = []
    with contextlib.suppress(AuthFailed):
        d.authenticate(user, password)
    assert len(d.binds) == 1
    if user != "alice":
        assert d.binds[0] not in ad.dns.values(), "a refused account's own DN is never bound"


def test_login_by_user_principal_name(ad):
    assert ad.directory.authenticate("alice@shiftdesk.test", ad.passwords["alice"]).username == "alice"


@pytest.mark.parametrize("user,password,reason", [
    ("alice", "wrong-password", "wrong password"),
    ("alice", "", "blank password"),
    ("alice", "   ", "blank password"),
    ("nobody", "whatever-1A!", "unknown user"),
    ("dave", "Dave-Pass-1234!", "account disabled"),
])
def test_refusals(ad, user, password, reason):
    with pytest.raises(AuthFailed) as e:
        ad.directory.authenticate(user, password)
    assert reason in e.value.reason
    assert str(e.value) == "invalid username or password"  # the caller learns nothing more


@pytest.mark.parametrize("user", ["*", "al*", "alice)(objectClass=*", "*)(|(sAMAccountName=*",
                                  "alice\\2a", "\x00alice", "alice)(userAccountControl=512"])
def test_filter_injection_finds_nobody(ad, user):
    with pytest.raises(AuthFailed):
        ad.directory.authenticate(user, ad.passwords["alice"])


def test_locked_account_is_refused_even_with_the_right_password(ad):
    import subprocess

    # AD locks after failed binds: set a low threshold, then fail until locked

    subprocess.run(["samba-tool", "domain", "passwordsettings", "set", "-s", str(ad.dc.conf),
                    "--account-lockout-threshold=2", "--reset-account-lockout-after=30",
                    "--account-lockout-duration=30"], check=True, capture_output=True)
    try:
        for _ in range(3):
            with pytest.raises(AuthFailed):
                ad.directory.authenticate("erin", "not-her-password")
        with pytest.raises(AuthFailed) as e:
            ad.directory.authenticate("erin", ad.passwords["erin"])
        assert "locked" in e.value.reason
    finally:
        subprocess.run(["samba-tool", "domain", "passwordsettings", "set", "-s", str(ad.dc.conf),
                        "--account-lockout-threshold=0"], check=True, capture_output=True)


def test_plain_ldap_needs_explicit_permission(ad):
    with pytest.raises(PermanentError, match="plain LDAP refused"):
        LdapDirectory(url="ldap://127.0.0.1:389", base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                      bind_password=ad.passwords["svc"], ca_file=None)


def test_wrong_ca_is_refused(ad, tmp_path):
    from controlplane.drivers.local_ca import ensure_ca

    ensure_ca(tmp_path)  # a different CA: the DC's certificate must not validate
    other = LdapDirectory(url=ad.dc.url, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                          bind_password=ad.passwords["svc"], ca_file=str(tmp_path / "ca.pem"))
    with pytest.raises(TemporaryError):
        other.lookup("alice")


def test_starttls_with_validation_works(ad):
    d = LdapDirectory(url="ldap://127.0.0.1:389", start_tls=True, base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                      bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert))
    assert d.lookup("alice").username == "alice"


def test_directory_down_is_temporary(ad):
    d = LdapDirectory(url="ldaps://127.0.0.1:6360", base_dn=ad.dc.base_dn, bind_dn=ad.svc_dn,
                      bind_password=ad.passwords["svc"], ca_file=str(ad.dc.tls.ca_cert), connect_timeout=1)
    with pytest.raises(TemporaryError):
        d.authenticate("alice", ad.passwords["alice"])


def test_computer_account_lifecycle(ad):
    d = ad.directory
    secret = d.set_computer("sd-it-sales-abc123")
    assert len(secret) >= 32 and "sd-it-sales-abc123" in d.list_computers()
    again = d.set_computer("sd-it-sales-abc123")  # reset: a new one-time secret, same object
    assert again != secret and d.list_computers() == {"sd-it-sales-abc123"}
    d.delete_computer("sd-it-sales-abc123")
    d.delete_computer("sd-it-sales-abc123")  # missing is success
    assert d.list_computers() == set()
