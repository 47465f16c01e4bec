"""What clients send. What they see is services/views.py (shared with the CLI's --json)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from controlplane.errors import InvalidInput


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def same_as_path(field: str, path: str, body: str) -> None:
    """A PUT body names its object too (Terraform sends the whole object): it must be the path's."""
    if body != path:
        raise InvalidInput(f"{field}: the body names {body!r}, the path {path!r}", field=field)


class ImageBuild(Strict):
    recipe: str = Field(description="A folder under images/recipes", max_length=64)


class PoolCreate(Strict):
    name: str = Field(max_length=24, description="2-24 of a-z 0-9 '-'")
    image: str = Field(max_length=64, description="image name, or name:version")
    size: int = Field(ge=0, le=500)
    min_size: int = Field(0, ge=0, le=500)
    max_size: int = Field(50, ge=0, le=500)
    memory_mib: int | None = Field(None, ge=128, le=65536, description="default: what the image asks for")
    vcpus: int | None = Field(None, ge=1, le=16, description="default: what the image asks for")
    groups: list[str] = Field(default_factory=list, max_length=100, description="AD groups entitled to the pool")
    clone: str = Field("instant", max_length=16, description="instant (restore from a template) or cold (boot)")
    memory_sharing: bool = Field(True, description="the host may merge identical memory pages of these desktops "
                                                   "(KSM); false closes that side channel, policies can forbid it")


class PoolResize(Strict):
    size: int | None = Field(None, ge=0, le=500)
    groups: list[str] | None = Field(None, max_length=100, description="replace the entitled AD groups")
    min_size: int | None = Field(None, ge=0, le=500)
    max_size: int | None = Field(None, ge=0, le=500)
    clone: str | None = Field(None, max_length=16, description="instant or cold, for desktops made from now on")
    image: str | None = Field(None, max_length=64, description="image name or name:version for desktops made "
                                                               "from now on")


class HostRegister(Strict):
    name: str = Field(max_length=63, description="lower-case letters, digits, dots and dashes")
    uri: str = Field(max_length=512, description="libvirt URI: qemu+tls://host/system or qemu+ssh://...")


class HostUpdate(Strict):
    mode: str = Field(max_length=16, description="active (takes new desktops) or maintenance (takes none; its "
                                                 "idle desktops move away, sessions end first)")


class RolloutThresholds(Strict):
    """How much worse the new version may be than the old before the rollout rolls itself back."""

    failure_rate: float = Field(0.2, ge=0, le=1, description="extra provisioning failures per desktop")
    ready_ratio: float = Field(2.0, ge=1, le=100, description="new median time to ready / old median")
    restart_rate: float = Field(0.5, ge=0, le=100, description="extra restarts or crashes per desktop")
    drop_rate: float = Field(0.2, ge=0, le=1, description="extra sessions dropped in their first 5 minutes, "
                                                           "per session")
    min_samples: int = Field(1, ge=1, le=1000, description="new desktops provisioned before any judgement")


class RolloutCreate(Strict):
    image: str = Field(max_length=64, description="the new image: name or name:version")
    canary: str = Field("1", max_length=8, description="desktops first: a number, or a percentage like 10%")
    batch: int = Field(1, ge=1, le=100, description="idle desktops rebuilt at a time after the canary")
    soak_s: float = Field(300.0, ge=0, le=86400, description="the canary serves this long before the rest follow")
    thresholds: RolloutThresholds = Field(default_factory=RolloutThresholds)


class RolloutRollback(Strict):
    reason: str = Field("", max_length=200, description="why, for the audit log")


from controlplane.services.rollouts import RolloutPublic  # noqa: E402
from controlplane.services.views import DesktopPublic, ImagePublic, PoolPublic  # noqa: E402

__all__ = ["DesktopPublic", "ImageBuild", "ImagePublic", "PoolCreate", "PoolPublic", "PoolResize", "Login",
           "LoginPublic", "Revoke", "PolicyFiles", "Rollback", "RolloutCreate", "RolloutPublic", "RolloutRollback",
           "RolloutThresholds"]


class Login(Strict):
    username: str = Field(min_length=1, max_length=256)
    password: str = Field(max_length=1024, repr=False)


class LoginPublic(BaseModel):
    token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    role: str
    username: str
    expires_at: int


class Revoke(Strict):
    username: str = Field(min_length=1, max_length=256)


class PolicyFiles(Strict):
    files: dict[str, str] = Field(description="file name -> YAML text", max_length=200)
    comment: str = Field("", max_length=500)


class PolicySource(Strict):
    """One policy as the YAML (or JSON) text it is written in; read back exactly as written."""

    name: str = Field(max_length=64, description="the policy's name; the text must name the same")
    yaml: str = Field(max_length=65536, description="the policy document (policies/README.md)")


class RosterSource(Strict):
    """One pool's roster as the YAML (or JSON) text it is written in; read back exactly as written."""

    pool: str = Field(max_length=24, description="the pool; the text must name the same")
    yaml: str = Field(max_length=65536, description="the roster document (policies/rosters/)")


class Rollback(Strict):
    revision: int = Field(ge=1)
    comment: str = Field("", max_length=500)
