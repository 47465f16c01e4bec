"""Names of pools, images and the libvirt objects derived from them.

Names end up in libvirt domain names, file names and XML, so they are held to a narrow
alphabet here, once, instead of escaped in many places.
"""

from __future__ import annotations

import re
import secrets

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$")
PREFIX = "sd"


class InvalidName(ValueError):
    def __init__(self, field: str, value: str) -> None:
        super().__init__(
            f"{field}: {value!r} must be 2-24 characters of a-z, 0-9 and '-', "
            "start with a letter and not end with '-'"
        )
        self.field = field


def check_name(field: str, value: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value) or "--" in value:
        raise InvalidName(field, str(value))
    return value


def desktop_name(instance: str, pool: str, suffix: str | None = None) -> str:
    """`sd-<instance>-<pool>-<6 hex>`: unique per libvirtd, recognisable as ours."""
    return f"{PREFIX}-{instance}-{pool}-{suffix or secrets.token_hex(3)}"


TEMPLATE_MARK = ".tpl-"  # what sets a template's name apart: no desktop name has a dot


def desktop_pattern(instance: str) -> re.Pattern[str]:
    """What `desktop_name` makes for INSTANCE (a name with "--" in it is still refused by callers)."""
    return re.compile(rf"{PREFIX}-{re.escape(instance)}-[a-z][a-z0-9-]{{0,22}}[a-z0-9]-[0-9a-f]{{6}}")


def template_prefix(instance: str) -> str:
    """`sd-<instance>.tpl-`: an instant-clone template's name is this and its key's slug."""
    return f"{PREFIX}-{instance}{TEMPLATE_MARK}"


def domain_prefixes(instance: str) -> tuple[str, str]:
    """What every libvirt domain of INSTANCE's starts with: its desktops' prefix, its templates'."""
    return f"{PREFIX}-{instance}-", template_prefix(instance)


def volume_name(desktop: str) -> str:
    return f"{desktop}.qcow2"


def desktop_of_volume(volume: str) -> str | None:
    return volume[: -len(".qcow2")] if volume.endswith(".qcow2") else None
