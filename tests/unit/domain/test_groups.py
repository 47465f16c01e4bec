"""Group references: full DNs and SIDs, normalised so that equal groups compare equal and a
bare cn (which anyone can reuse in another OU) is refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.domain.groups import InvalidGroup, group_ref, normalize_dn, sid_text

AGENTS = "CN=cc-agents,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test"


@pytest.mark.parametrize("spelling", [
    AGENTS,
    "cn=CC-Agents,ou=agents,ou=shiftdesk,dc=SHIFTDESK,dc=test",
    " CN = cc-agents , OU=Agents,  OU=ShiftDesk ,DC=shiftdesk,DC=test ",
    "CN=cc\\-agents,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test",
    "CN=cc\\2dagents,OU=Agents,OU=ShiftDesk,DC=shiftdesk,DC=test",
])
def test_one_group_many_spellings(spelling):
    assert group_ref(spelling) == group_ref(AGENTS) == "cn=cc-agents,ou=agents,ou=shiftdesk,dc=shiftdesk,dc=test"


def test_same_cn_in_another_ou_is_another_group():
    assert group_ref("CN=cc-agents,OU=Rogue,DC=shiftdesk,DC=test") != group_ref(AGENTS)


def test_escaped_separators_stay_part_of_the_value():
    # "CN=a\,OU=x" is ONE rdn whose value contains a comma, not two rdns
    one = normalize_dn("CN=a\\,OU=x,DC=test")
    assert one != normalize_dn("CN=a,OU=x,DC=test")
    assert one == normalize_dn("cn=A\\2C ou=X,dc=Test".replace(" ", ""))
    assert normalize_dn(one) == one  # canonical form is a fixed point


def test_inner_whitespace_is_significant():
    assert group_ref("CN=cc  agents,DC=test") != group_ref("CN=cc agents,DC=test")


@pytest.mark.parametrize("sid", ["S-1-5-21-1004336348-1177238915-682003330-512",
                                 "s-1-5-21-1004336348-1177238915-682003330-512"])
def test_sids(sid):
    assert group_ref(sid) == "s-1-5-21-1004336348-1177238915-682003330-512"


def test_sid_from_binary():
    raw = bytes([1, 5, 0, 0, 0, 0, 0, 5, 21, 0, 0, 0]) + b"".join(
        n.to_bytes(4, "little") for n in (1004336348, 1177238915, 682003330, 512))
    assert sid_text(raw) == "s-1-5-21-1004336348-1177238915-682003330-512"
    with pytest.raises(InvalidGroup):
        sid_text(raw[:-1])


@pytest.mark.parametrize("bad,why", [
    ("cc-agents", "full DN"),
    ("CN=cc-agents", "full DN"),
    ("cn=", "empty"),
    ("CN=x,,DC=test", "attribute type"),
    ("=x,DC=test", "attribute"),
    ("CN=x\\,DC=test\\", "escape"),
    ("CN=x\\a,DC=test", "escape"),
    ("S-1-5", "SID"),
    ("S-1-5-21-x", "SID"),
    ("CN=a+OU=b,DC=test", "multi-valued"),
    ("", "empty"),
])
def test_refused(bad, why):
    with pytest.raises(InvalidGroup, match=why):
        group_ref(bad)


@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=12),
                min_size=2, max_size=5))
def test_any_value_round_trips_through_escaping(values):
    """Whatever a value holds (commas, plus signs, backslashes, spaces at either end, NUL), escaping
    then parsing gives it back, and the canonical form is a fixed point."""
    from controlplane.domain.groups import escape_value

    dn = ",".join(f"CN={escape_value(v)}" for v in values) + ",DC=test"
    canon = normalize_dn(dn)
    assert normalize_dn(canon) == canon
    assert canon == ",".join(f"cn={escape_value(v.lower())}" for v in values) + ",dc=test"
