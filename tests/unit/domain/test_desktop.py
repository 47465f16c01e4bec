import pytest

from controlplane.domain.desktop import DesktopState as S
from controlplane.domain.desktop import TransitionRefused, check_transition
from controlplane.domain.naming import InvalidName, check_name, desktop_name, desktop_of_volume, volume_name


def test_lifecycle_edges():
    check_transition(S.PROVISIONING, S.READY)
    check_transition(S.READY, S.IN_USE)
    with pytest.raises(TransitionRefused):
        check_transition(S.DELETING, S.READY)
    with pytest.raises(TransitionRefused):
        check_transition(S.FAILED, S.READY)


@pytest.mark.parametrize("bad", ["", "a", "Sales", "-x", "x-", "a--b", "a b", "x" * 25, "sales/../x", "ś1"])
def test_bad_names_are_refused_naming_the_field(bad):
    with pytest.raises(InvalidName) as e:
        check_name("name", bad)
    assert str(e.value).startswith("name:")


def test_names_round_trip():
    name = desktop_name("main", "sales", "abc123")
    assert name == "sd-main-sales-abc123"
    assert desktop_of_volume(volume_name(name)) == name
    assert desktop_of_volume("other.img") is None
