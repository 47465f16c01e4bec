"""What clients send. What they see is services/views.py (shared with the CLI's --json)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ImageBuild(Strict):
    recipe: str = Field(description="A folder under images/recipes", max_length=64)


class PoolCreate(Strict):
    name: str = Field(max_length=24, description="2-24 of a-z 0-9 '-'")
    image: str = Field(max_length=64, description="image name, or name:version")
    size: int = Field(ge=0, le=500)
    min_size: int = Field(0, ge=0, le=500)
    max_size: int = Field(50, ge=0, le=500)
    memory_mib: int = Field(256, ge=128, le=65536)
    vcpus: int = Field(1, ge=1, le=16)


class PoolResize(Strict):
    size: int = Field(ge=0, le=500)
    min_size: int | None = Field(None, ge=0, le=500)
    max_size: int | None = Field(None, ge=0, le=500)


from controlplane.services.views import DesktopPublic, ImagePublic, PoolPublic  # noqa: E402

__all__ = ["DesktopPublic", "ImageBuild", "ImagePublic", "PoolCreate", "PoolPublic", "PoolResize"]
