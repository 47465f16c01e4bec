"""The demo domain `make run` provisions: who is in it, which groups, and where.

It mirrors a small contact centre: an admin, two sales agents and a support agent. The group
DNs are the ones the example policies in `policies/` bind (a unit test keeps the two in step),
so the example policies apply to the demo users as they would to a real floor. Pure data: the
demo service (services/demo.py) writes it through the DirectoryAdmin port.
"""

from __future__ import annotations

from dataclasses import dataclass

REALM = "SHIFTDESK.TEST"
BASE_DN = "DC=shiftdesk,DC=test"
ROOT_OU = "ShiftDesk"
SERVICE_ACCOUNT = "svc-shiftdesk"


def ou_dn(ou: str) -> str:
    """An OU under the ShiftDesk OU (the root OU itself for ROOT_OU)."""
    root = f"OU={ROOT_OU},{BASE_DN}"
    return root if ou == ROOT_OU else f"OU={ou},{root}"


@dataclass(frozen=True)
class DemoGroup:
    name: str
    ou: str
    groups: tuple[str, ...] = ()  # demo groups nested in this one (created before it)

    @property
    def dn(self) -> str:
        return f"CN={self.name},{ou_dn(self.ou)}"


@dataclass(frozen=True)
class DemoUser:
    name: str
    display: str
    ou: str
    groups: tuple[str, ...]
    role: str  # what the sign-in list says they are for

    @property
    def dn(self) -> str:
        return f"CN={self.name},{ou_dn(self.ou)}"


@dataclass(frozen=True)
class DemoPool:
    name: str
    group: str  # the demo group entitled to it
    size: int  # the roster resizes it once `shiftdesk serve` runs


OUS = ("Agents", "Admins", "Desktops")  # under ROOT_OU; Desktops holds the desktops' computer accounts
COMPUTERS_OU = "Desktops"
GROUPS = (
    DemoGroup("cc-sales-team", "Agents"),
    DemoGroup("cc-support", "Agents"),
    DemoGroup("cc-agents", "Agents", groups=("cc-sales-team", "cc-support")),
    DemoGroup("shiftdesk-admins", "Admins"),
)
USERS = (
    DemoUser("ada", "Ada Admin", "Admins", ("shiftdesk-admins",), "admin: the console"),
    DemoUser("sam", "Sam Sales", "Agents", ("cc-sales-team",), "agent, sales pool"),
    DemoUser("sara", "Sara Sales", "Agents", ("cc-sales-team",), "agent, sales pool"),
    DemoUser("sue", "Sue Support", "Agents", ("cc-support",), "agent, support pool"),
)
ADMIN_GROUP = "shiftdesk-admins"
POOLS = (DemoPool("sales", "cc-sales-team", 2), DemoPool("support", "cc-support", 1))


def group(name: str) -> DemoGroup:
    return next(g for g in GROUPS if g.name == name)


def members(of: DemoGroup) -> list[str]:
    """DNs of OF's members: its nested groups and the users in it."""
    return [group(n).dn for n in of.groups] + [u.dn for u in USERS if of.name in u.groups]
