"""Pool repository functions. Keyword-only; the caller owns the transaction."""

from __future__ import annotations

from sqlmodel import Session, select

from controlplane.db.models import Pool
from controlplane.errors import NotFound


def get_by_name(*, session: Session, name: str) -> Pool | None:
    return session.exec(select(Pool).where(Pool.name == name)).first()


def get_or_raise(*, session: Session, name: str) -> Pool:
    pool = get_by_name(session=session, name=name)
    if pool is None:
        raise NotFound(f"pool {name!r} does not exist", field="pool")
    return pool


def list_all(*, session: Session) -> list[Pool]:
    return list(session.exec(select(Pool).order_by(Pool.name)))


def using_image(*, session: Session, image_id: int) -> list[Pool]:
    return list(session.exec(select(Pool).where(Pool.image_id == image_id)))


def create(*, session: Session, pool: Pool) -> Pool:
    session.add(pool)
    session.flush()
    return pool


def delete(*, session: Session, pool: Pool) -> None:
    session.delete(pool)
    session.flush()
