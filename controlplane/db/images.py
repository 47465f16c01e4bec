"""Golden-image repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from sqlmodel import Session, func, select

from controlplane.db.models import Image
from controlplane.errors import NotFound


def get(*, session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def get_or_raise(*, session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} does not exist", field="image")
    return image


def resolve(*, session: Session, ref: str) -> Image:
    """`name` (newest non-deprecated version), `name:version`, or a numeric id."""
    name, _, version = ref.partition(":")
    query = select(Image).where(Image.name == name)
    if version:
        if not version.isdigit():
            raise NotFound(f"image {ref!r}: version must be a number", field="image")
        query = query.where(Image.version == int(version))
    else:
        query = query.where(Image.deprecated == False)  # noqa: E712 - SQL expression
    image = session.exec(query.order_by(Image.version.desc())).first()  # type: ignore[attr-defined]
    if image is None and ref.isdigit():
        image = session.get(Image, int(ref))
    if image is None:
        raise NotFound(f"image {ref!r} does not exist (or every version is deprecated)", field="image")
    return image


def by_sha256(*, session: Session, name: str, sha256: str) -> Image | None:
    return session.exec(select(Image).where(Image.name == name, Image.sha256 == sha256)).first()


def next_version(*, session: Session, name: str) -> int:
    current = session.exec(select(func.max(Image.version)).where(Image.name == name)).one()
    return int(current or 0) + 1


def list_all(*, session: Session) -> list[Image]:
    return list(session.exec(select(Image).order_by(Image.name, Image.version)))  # type: ignore[arg-type]


def create(*, session: Session, image: Image) -> Image:
    session.add(image)
    session.flush()
    return image


def delete(*, session: Session, image: Image) -> None:
    session.delete(image)
    session.flush()
