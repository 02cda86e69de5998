"""Dead letters in the database: messages that failed for good, kept per integration up to a bound."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from ..db.models import DeadLetter, Integration
from ..errors import NotFoundError
from .integrations import get_integration


def park(session: Session, *, app_id: str, integration_id: str, letter: dict[str, Any], limit: int) -> int | None:
    """Keep a dead letter (and count it on the integration); past `limit`, the oldest go.

    Returns how many the integration now keeps, or None when the integration no longer exists (then nothing
    is kept: a worker of a deleted integration).
    """
    if session.get(Integration, (app_id, integration_id)) is None:
        return None
    session.add(DeadLetter(application_id=app_id, integration_id=integration_id, **letter))
    session.execute(
        update(Integration)
        .where(Integration.application_id == app_id, Integration.id == integration_id)
        .values(dead_lettered=Integration.dead_lettered + 1)
    )
    session.flush()
    mine = (DeadLetter.application_id == app_id, DeadLetter.integration_id == integration_id)
    count = int(session.scalar(select(func.count()).select_from(DeadLetter).where(*mine)) or 0)
    if count > limit:
        oldest = select(DeadLetter.id).where(*mine).order_by(DeadLetter.id).limit(count - limit)
        session.execute(delete(DeadLetter).where(DeadLetter.id.in_(list(session.scalars(oldest)))))
        count = limit
    return count


def page(
    session: Session, *, app_id: str, integration_id: str, limit: int, offset: int
) -> tuple[list[DeadLetter], int]:
    """An integration's dead letters, oldest first, and how many there are."""
    get_integration(session, app_id, integration_id)
    mine = (DeadLetter.application_id == app_id, DeadLetter.integration_id == integration_id)
    total = int(session.scalar(select(func.count()).select_from(DeadLetter).where(*mine)) or 0)
    query = select(DeadLetter).where(*mine).order_by(DeadLetter.id).limit(limit).offset(offset)
    return list(session.scalars(query)), total


def chosen(session: Session, *, app_id: str, integration_id: str, ids: list[int] | None) -> list[DeadLetter]:
    """These dead letters of the integration (all of them when `ids` is None); NotFoundError names a missing id."""
    get_integration(session, app_id, integration_id)
    query = select(DeadLetter).where(DeadLetter.application_id == app_id, DeadLetter.integration_id == integration_id)
    if ids is not None:
        query = query.where(DeadLetter.id.in_(ids))
    found = list(session.scalars(query.order_by(DeadLetter.id)))
    missing = sorted(set(ids or []) - {letter.id for letter in found})
    if missing:
        raise NotFoundError("dead letter", str(missing[0]))
    return found


def remove(session: Session, *, app_id: str, integration_id: str, ids: list[int]) -> int:
    """Delete these dead letters of the integration; how many went."""
    result = session.execute(
        delete(DeadLetter).where(
            DeadLetter.application_id == app_id, DeadLetter.integration_id == integration_id, DeadLetter.id.in_(ids)
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
