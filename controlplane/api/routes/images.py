"""Golden images."""

from __future__ import annotations

from fastapi import APIRouter, Depends, status

from controlplane.api.deps import Actor, CtxDep, current_admin
from controlplane.api.schemas import ImageBuild, ImagePublic
from controlplane.services import images
from controlplane.services.views import image_view

router = APIRouter(prefix="/api/v1/images", tags=["images"], dependencies=[Depends(current_admin)])


@router.get("", response_model=list[ImagePublic])
def list_images(ctx: CtxDep) -> list[ImagePublic]:
    return [image_view(i) for i in images.list_all(ctx)]


@router.post("", response_model=ImagePublic, status_code=status.HTTP_201_CREATED)
def build_image(body: ImageBuild, ctx: CtxDep, actor: Actor) -> ImagePublic:
    """Build a recipe and register it (same bytes as an existing version: that version)."""
    return image_view(images.build(ctx, body.recipe, actor=actor))


@router.get("/{ref}", response_model=ImagePublic)
def get_image(ref: str, ctx: CtxDep) -> ImagePublic:
    return image_view(images.get(ctx, ref))


@router.post("/{ref}/deprecate", response_model=ImagePublic)
def deprecate_image(ref: str, ctx: CtxDep, actor: Actor) -> ImagePublic:
    return image_view(images.deprecate(ctx, ref, actor=actor))


@router.delete("/{ref}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(ref: str, ctx: CtxDep, actor: Actor) -> None:
    images.delete(ctx, ref, actor=actor)
