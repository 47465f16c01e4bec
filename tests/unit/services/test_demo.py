"""`make run`'s demo: the demo domain's content through the DirectoryAdmin port, its passwords kept
0600 and stable across runs, settings a shell can source exactly, and the example policies,
pools and rosters installed once (a second run changes nothing). The real Samba DC and the whole
script are tested in tests/e2e/test_make_run.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from controlplane.domain import demo as spec
from controlplane.domain.groups import group_ref
from controlplane.errors import PermanentError
from controlplane.services import demo, identity, policies, pools

ROOT = Path(__file__).resolve().parents[3]


class FakeAdmin:
    """The DirectoryAdmin port in memory: entries by DN, users' passwords, group members."""

    def __init__(self, base_dn: str = spec.BASE_DN, ca_file: str = "/etc/ca with space/$HOME'.pem") -> None:
        self.base_dn, self.url, self.ca_file = base_dn, "ldaps://127.0.0.1:636", ca_file
        self.entries: dict[str, str] = {}
        self.passwords: dict[str, str] = {}
        self.members: dict[str, set[str]] = {}
        self.delegated: set[str] = set()

    def ensure_ou(self, name: str, parent: str | None = None) -> str:
        dn = f"OU={name},{parent or self.base_dn}"
        self.entries[dn] = "ou"
        return dn

    def ensure_user(self, ou: str, name: str, password: str, *, display: str) -> str:
        assert ou in self.entries, f"{ou} before its users"
        dn = f"CN={name},{ou}"
        self.entries[dn], self.passwords[name] = "user", password
        return dn

    def ensure_group(self, ou: str, name: str, members: list[str]) -> str:
        assert all(m in self.entries for m in members), "members exist before their group"
        dn = f"CN={name},{ou}"
        self.entries[dn] = "group"
        self.members.setdefault(dn, set()).update(members)
        return dn

    def delegate_computers(self, account_dn: str) -> None:
        self.delegated.add(account_dn)

    def close(self) -> None:
        pass


def groups_of(admin: FakeAdmin, dn: str) -> frozenset[str]:
    """Every group DN holds DN, nested ones included (what AD's in-chain search answers)."""
    found: set[str] = set()
    frontier = {dn}
    while frontier:
        frontier = {g for g, m in admin.members.items() if m & frontier} - found
        found |= frontier
    return frozenset(group_ref(g) for g in found)


def test_fill_creates_the_domain_and_keeps_passwords_private_and_stable(tmp_path):
    admin = FakeAdmin()
    first = demo.fill(admin, tmp_path / "demo")
    assert first.new_passwords
    users = {u.name for u in spec.USERS}
    assert users | {spec.SERVICE_ACCOUNT} == set(admin.passwords)
    assert len(set(admin.passwords.values())) == len(admin.passwords)  # generated, one each
    for name in ("sign-ins.json", "ldap.env"):
        assert (tmp_path / "demo" / name).stat().st_mode & 0o777 == 0o600
    assert first.bind_dn in admin.delegated
    assert first.computers_ou in admin.entries

    again = demo.fill(FakeAdmin(), tmp_path / "demo")
    assert not again.new_passwords
    assert again.sign_ins == first.sign_ins and again.bind_password == first.bind_password


def test_a_damaged_password_file_is_replaced(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "sign-ins.json").write_text(json.dumps({"ada": 1}))
    result = demo.fill(FakeAdmin(), tmp_path / "demo")
    assert result.new_passwords
    assert json.loads((tmp_path / "demo" / "sign-ins.json").read_text())["ada"] == result.sign_ins[0].password


def test_the_settings_file_sources_to_exactly_the_values(tmp_path):
    result = demo.fill(FakeAdmin(), tmp_path / "demo")
    shown = subprocess.run(["bash", "-c", 'source "$1"; printf "%s\\n" "$SHIFTDESK_LDAP__CA_FILE" '
                            '"$SHIFTDESK_LDAP__BIND_PASSWORD" "$SHIFTDESK_AUTH__ADMIN_GROUP"', "-",
                            str(tmp_path / "demo" / "ldap.env")], capture_output=True, text=True, check=True)
    assert shown.stdout.splitlines() == [result.ca_file, result.bind_password, result.admin_group]


def test_another_domain_is_refused_before_anything_is_written(tmp_path):
    admin = FakeAdmin(base_dn="DC=corp,DC=example")
    with pytest.raises(PermanentError, match="demo domain"):
        demo.fill(admin, tmp_path / "demo")
    assert not admin.entries and not (tmp_path / "demo").exists()


def test_demo_users_get_their_pool_and_the_example_policies(ctx, image, tmp_path):
    admin = FakeAdmin()
    result = demo.fill(admin, tmp_path / "demo")
    files = {p.name: p.read_text() for p in (ROOT / "policies").glob("*.yaml")}
    rosters = {p.name: p.read_text() for p in (ROOT / "scripts" / "demo-rosters").glob("*.yaml")}
    done = demo.install(ctx, image="busybox-desktop", policy_files=files, roster_files=rosters, actor="test")
    assert len(done) == 5, done  # policies, two pools, two rosters

    expected = {"sam": ("sales", {"all-agents", "sales-floor"}), "sara": ("sales", {"all-agents", "sales-floor"}),
                "sue": ("support", {"all-agents", "support-desk"})}
    for user, (pool, applied) in expected.items():
        groups = groups_of(admin, next(u.dn for u in spec.USERS if u.name == user))
        assert [p.name for p in identity.entitled_pools(ctx, groups)] == [pool]
        assert set(policies.effective_for(ctx, user, groups, pool)["applied"]) == applied
    ada = groups_of(admin, next(u.dn for u in spec.USERS if u.name == "ada"))
    assert group_ref(result.admin_group) in ada and not identity.entitled_pools(ctx, ada)

    assert demo.install(ctx, image="busybox-desktop", policy_files=files, roster_files=rosters, actor="test") == []
    assert {p.name: p.target_size for p in pools.list_all(ctx)} == {p.name: p.size for p in spec.POOLS}
