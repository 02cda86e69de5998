"""The per-device downlink queue in the database (synchronous; the handler runs these in a thread)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db.models import QueuedDownlink, utcnow

PRIORITY_RANK = {"LOWEST": 0, "LOW": 1, "BELOW_NORMAL": 2, "NORMAL": 3, "ABOVE_NORMAL": 4, "HIGH": 5, "HIGHEST": 6}


class QueueFull(Exception):
    """The device already has as many queued downlinks as allowed."""


def queued(session: Session, app_id: str, device_id: str, *, take: bool = False) -> list[QueuedDownlink]:
    """The device's queue, in sending order (priority first, then age).

    `take`: lock the rows until commit, skipping any another instance holds (PostgreSQL), so two instances
    handling two uplinks of one device at once never send the same downlink.
    """
    statement = (
        select(QueuedDownlink)
        .where(
            QueuedDownlink.application_id == app_id,
            QueuedDownlink.device_id == device_id,
            QueuedDownlink.state == "queued",
        )
        .order_by(QueuedDownlink.queued_at)
    )
    if take:
        statement = statement.with_for_update(skip_locked=True)
    items = session.scalars(statement)
    return sorted(items, key=lambda item: -PRIORITY_RANK[item.body.get("priority", "NORMAL")])


def enqueue(
    session: Session, *, app_id: str, device_id: str, downlinks: list[dict[str, Any]], replace: bool, limit: int
) -> list[QueuedDownlink]:
    """Add downlinks (or replace the queue with them); each gets an id and a correlation id."""
    if replace:
        session.execute(
            update(QueuedDownlink)
            .where(
                QueuedDownlink.application_id == app_id,
                QueuedDownlink.device_id == device_id,
                QueuedDownlink.state == "queued",
            )
            .values(state="replaced")
        )
        waiting = 0
    else:
        waiting = len(queued(session, app_id, device_id))
    if waiting + len(downlinks) > limit:
        raise QueueFull(f"the queue of {device_id} holds {waiting} downlinks; at most {limit} are allowed")
    records = [_record(app_id, device_id, body) for body in downlinks]
    session.add_all(records)
    session.flush()
    return records


def record_sent(
    session: Session, *, app_id: str, device_id: str, downlinks: list[dict[str, Any]]
) -> list[QueuedDownlink]:
    """Record downlinks that go to the device at once (named ones) as sent: never queued, so no uplink takes them
    and no queue limit counts them; each gets an id and a correlation id, and can be acknowledged as any sent one."""
    now = utcnow()
    records = [_record(app_id, device_id, body, state="sent", sent_at=now) for body in downlinks]
    session.add_all(records)
    session.flush()
    return records


def push(
    session: Session, *, app_id: str, device_id: str, downlinks: list[dict[str, Any]], replace: bool, limit: int
) -> list[QueuedDownlink]:
    """One push, in one transaction: the unnamed downlinks queued (or replacing the queue), the named ones recorded
    as sent (their delivery is the caller's); returns them all in the order given."""
    unnamed = [body for body in downlinks if "name" not in body]
    named = [body for body in downlinks if "name" in body]
    queued_now: list[QueuedDownlink] = []
    if unnamed or replace:  # without unnamed ones a push leaves the queue alone, even a full one; a replace empties it
        queued_now = enqueue(
            session, app_id=app_id, device_id=device_id, downlinks=unnamed, replace=replace, limit=limit
        )
    sent_now = record_sent(session, app_id=app_id, device_id=device_id, downlinks=named)
    queued_order, sent_order = iter(queued_now), iter(sent_now)
    return [next(sent_order) if "name" in body else next(queued_order) for body in downlinks]


def _record(app_id: str, device_id: str, body: dict[str, Any], **state: Any) -> QueuedDownlink:
    """A new downlink row with its id, and the id as the correlation id `down:<id>` after the sender's."""
    ident = uuid.uuid4().hex
    body = {**body, "correlation_ids": [*body.get("correlation_ids", []), f"down:{ident}"]}
    return QueuedDownlink(id=ident, application_id=app_id, device_id=device_id, body=body, **state)


def take_next(session: Session, *, app_id: str, device_id: str) -> tuple[QueuedDownlink | None, int]:
    """Mark the next queued downlink sent (class A: one per uplink); returns it and how many remain."""
    items = queued(session, app_id, device_id, take=True)
    if not items:
        return None, 0
    item = items[0]
    item.state, item.sent_at = "sent", utcnow()
    return item, len(items) - 1


class NotAwaited(Exception):
    """No confirmed downlink sent to the device waits for the answer it gave; the text says which."""


def settle(
    session: Session, *, app_id: str, device_id: str, downlink_id: str | None, outcome: str, limit: int
) -> tuple[QueuedDownlink, list[QueuedDownlink]]:
    """Record a device's answer (`acked` or `nacked`) to a confirmed downlink it was sent: the one named, or, as
    LoRaWAN's ACK bit means, the last one sent; a nacked one is queued again in the same transaction. Returns it
    and what was queued again (a named one: recorded as sent again, for the caller to deliver at once). The same
    answer twice (a retry, a message delivered twice) changes nothing.
    NotAwaited when there is nothing to answer."""
    statement = (
        select(QueuedDownlink)
        .where(
            QueuedDownlink.application_id == app_id,
            QueuedDownlink.device_id == device_id,
            QueuedDownlink.state.in_(("sent", "acked", "nacked")),
        )
        .order_by(QueuedDownlink.sent_at.desc())
    )
    if downlink_id is not None:
        statement = statement.where(QueuedDownlink.id == downlink_id)
    item = next((item for item in session.scalars(statement) if item.body.get("confirmed")), None)
    if item is None:
        named = f"downlink {downlink_id}" if downlink_id else "a confirmed downlink"
        raise NotAwaited(f"no {named} was sent to {device_id} and waits for an answer")
    if item.state == outcome:
        return item, []
    if item.state != "sent":
        raise NotAwaited(f"downlink {item.id} was {item.state} already")
    item.state = outcome
    if outcome != "nacked":
        return item, []
    again = {key: value for key, value in item.body.items() if key != "correlation_ids"}
    return item, push(session, app_id=app_id, device_id=device_id, downlinks=[again], replace=False, limit=limit)


def expire(session: Session, *, ttl_seconds: int) -> list[QueuedDownlink]:
    """Fail every downlink queued longer than the time to live."""
    cutoff = utcnow() - timedelta(seconds=ttl_seconds)
    # Skipping rows another instance is expiring (or sending) right now: each fails once, with one event.
    items = list(
        session.scalars(
            select(QueuedDownlink)
            .where(QueuedDownlink.state == "queued", QueuedDownlink.queued_at < cutoff)
            .with_for_update(skip_locked=True)
        )
    )
    for item in items:
        item.state, item.error = "failed", f"not sent within {ttl_seconds} s (no uplink from the device)"
    # Keep finished downlinks for one more time-to-live (for the API), then forget them.
    session.execute(
        delete(QueuedDownlink).where(
            QueuedDownlink.state != "queued", QueuedDownlink.queued_at < cutoff - timedelta(seconds=ttl_seconds)
        )
    )
    return items


def devices_with_queue(session: Session) -> set[tuple[str, str]]:
    """(application, device) pairs that have queued downlinks, so uplinks skip the database otherwise."""
    rows = session.execute(
        select(QueuedDownlink.application_id, QueuedDownlink.device_id)
        .where(QueuedDownlink.state == "queued")
        .distinct()
    )
    return {(row[0], row[1]) for row in rows}


def clear(session: Session, *, app_id: str, device_id: str) -> int:
    """Drop a device's queue; returns how many were dropped."""
    result = session.execute(
        update(QueuedDownlink)
        .where(
            QueuedDownlink.application_id == app_id,
            QueuedDownlink.device_id == device_id,
            QueuedDownlink.state == "queued",
        )
        .values(state="cleared")
    )
    return int(getattr(result, "rowcount", 0) or 0)
