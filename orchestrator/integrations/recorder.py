"""Records what workers report: their events (in the log), delivery history, errors and counters per minute."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.worker import LATENCY_BUCKETS

from ..bus import Bus
from ..db import Database
from ..db.models import Integration, IntegrationActivity, IntegrationStats, utcnow
from ..db.session import retry_until_stored
from ..events.log import NewEvent
from ..events.outbox import Outbox
from ..store.dead_letters import park

log = logging.getLogger(__name__)
ACTIVITY_KEPT = 200
STATS_KEPT = timedelta(days=7)
RECORDED_KINDS = ("delivery", "error", "retry")


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def record_activity(
    session: Session, *, app_id: str, integration_id: str, kind: str, message: str, details: dict[str, Any]
) -> None:
    """Keep one delivery or error (the last ACTIVITY_KEPT per integration); errors become last_error."""
    record = session.get(Integration, (app_id, integration_id))
    if record is None:
        return
    session.add(
        IntegrationActivity(
            application_id=app_id, integration_id=integration_id, kind=kind, message=message[:2000], details=details
        )
    )
    if kind == "error":
        record.last_error, record.last_error_at = message[:2000], utcnow()
    session.flush()
    newest = (
        select(IntegrationActivity.id)
        .where(IntegrationActivity.application_id == app_id, IntegrationActivity.integration_id == integration_id)
        .order_by(IntegrationActivity.id.desc())
        .limit(ACTIVITY_KEPT)
    )
    session.execute(
        delete(IntegrationActivity).where(
            IntegrationActivity.application_id == app_id,
            IntegrationActivity.integration_id == integration_id,
            IntegrationActivity.id.not_in(newest),
        )
    )


def add_stats(session: Session, *, app_id: str, integration_id: str, delta: dict[str, Any]) -> None:
    """Add a worker's counter deltas to the totals and to this minute's bucket."""
    record = session.get(Integration, (app_id, integration_id))
    if record is None:
        return
    counts = {name: int(delta.get(name, 0) or 0) for name in ("delivered", "failed", "retried", "duplicates")}
    if any(value < 0 for value in counts.values()):
        return
    record.delivered += counts["delivered"]
    record.failed += counts["failed"]
    record.retried += counts["retried"]
    record.duplicates += counts["duplicates"]
    record.delivery_latency = _merged_latency(record.delivery_latency or {}, delta.get("latency"))
    last = _parse_time(delta.get("last_delivery_at"))
    if last is not None and (record.last_delivery_at is None or last > record.last_delivery_at):
        record.last_delivery_at = last
    minute = utcnow().replace(second=0, microsecond=0)
    bucket = session.get(IntegrationStats, (app_id, integration_id, minute))
    if bucket is None:
        bucket = IntegrationStats(
            application_id=app_id, integration_id=integration_id, minute=minute, delivered=0, failed=0, retried=0
        )
        session.add(bucket)
        session.execute(delete(IntegrationStats).where(IntegrationStats.minute < minute - STATS_KEPT))
    bucket.delivered += counts["delivered"]
    bucket.failed += counts["failed"]
    bucket.retried += counts["retried"]


def _merged_latency(total: dict[str, Any], more: Any) -> dict[str, Any]:
    """The latency histogram with a worker's delta added (a malformed delta adds nothing)."""
    size = len(LATENCY_BUCKETS) + 1
    if not isinstance(more, dict) or not isinstance(more.get("buckets"), list) or len(more["buckets"]) != size:
        return total
    if not all(isinstance(count, int) and count >= 0 for count in more["buckets"]):
        return total
    kept = total.get("buckets")
    buckets: list[int] = kept if isinstance(kept, list) and len(kept) == size else [0] * size
    added = float(more.get("sum") or 0.0) if isinstance(more.get("sum"), int | float) else 0.0
    return {
        "buckets": [before + count for before, count in zip(buckets, more["buckets"], strict=True)],
        "sum": float(total.get("sum") or 0.0) + max(0.0, added),
    }


class IntegrationRecorder:
    """Listens to what workers publish: events go to the log and the stream, history and counters to the database."""

    def __init__(self, db: Database, bus: Bus, outbox: Outbox, dead_letter_limit: int = 1000) -> None:
        self.db = db
        self.outbox = outbox
        self.dead_letter_limit = dead_letter_limit
        bus.subscribe(topics.integration_topic("+", "+", "events/+"), self._on_event, once=True)
        bus.subscribe(topics.integration_topic("+", "+", "stats"), self._on_stats, once=True)
        bus.subscribe(topics.integration_topic("+", "+", topics.DEAD_LETTERS), self._on_dead_letter, once=True)

    async def _on_dead_letter(self, topic: str, payload: bytes) -> None:
        await _acknowledged(self._record_dead_letter, topic, payload)

    async def _record_dead_letter(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        data = _json_object(topic, payload)
        if len(parts) != 5 or data is None:
            return
        app_id, integration_id = parts[1], parts[3]
        letter = {
            "topic": str(data.get("topic", ""))[:500],
            "payload": str(data.get("payload", "")),
            "encoding": "base64" if data.get("encoding") == "base64" else "utf-8",
            "event": str(data.get("event", "unknown"))[:64],
            "device_id": str(data.get("device_id") or "")[:36],
            "error": str(data.get("error", ""))[:10_000],
            "details": data["details"] if isinstance(data.get("details"), dict) else {},
            "attempts": data["attempts"] if isinstance(data.get("attempts"), int) else 1,
        }
        kept = await retry_until_stored(
            lambda: self.db.run(
                park, app_id=app_id, integration_id=integration_id, letter=letter, limit=self.dead_letter_limit
            ),
            what=topic,
        )
        if kept == self.dead_letter_limit:  # full now: the next one pushes out the oldest
            message = (
                f"{kept} dead letters are kept, the most an integration keeps (ORCH_DEAD_LETTERS_PER_INTEGRATION): "
                "each new one now removes the oldest; replay or delete them"
            )
            body = {"application_id": app_id, "integration_id": integration_id, "message": message, "kept": kept}
            event = NewEvent(app_id, "integration.dead_letters.full", json.dumps(body), integration_id=integration_id)
            await retry_until_stored(lambda: self.outbox.emit(event), what=topic)

    async def _on_event(self, topic: str, payload: bytes) -> None:
        await _acknowledged(self._record_event, topic, payload)

    async def _on_stats(self, topic: str, payload: bytes) -> None:
        await _acknowledged(self._record_stats, topic, payload)

    async def _record_event(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        data = _json_object(topic, payload)
        if parsed is None or parsed.integration_id is None or parsed.event is None or data is None:
            return
        app_id, integration_id = parsed.app_id, parsed.integration_id
        event = NewEvent(app_id, parsed.event, payload.decode(), integration_id=integration_id)
        await retry_until_stored(lambda: self.outbox.emit(event), what=topic)
        kind = parsed.event.removeprefix("integration.")
        if kind not in RECORDED_KINDS:
            return
        details = data.get("details") if isinstance(data.get("details"), dict) else {}
        await retry_until_stored(
            lambda: self.db.run(
                record_activity,
                app_id=app_id,
                integration_id=integration_id,
                kind=kind,
                message=str(data.get("message", "")),
                details=details or {},
            ),
            what=topic,
        )

    async def _record_stats(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        delta = _json_object(topic, payload)
        if parsed is None or parsed.integration_id is None or delta is None:
            return
        app_id, integration_id = parsed.app_id, parsed.integration_id
        await retry_until_stored(
            lambda: self.db.run(add_stats, app_id=app_id, integration_id=integration_id, delta=delta), what=topic
        )


async def _acknowledged(record: Callable[[str, bytes], Awaitable[None]], topic: str, payload: bytes) -> None:
    """Record a worker's message; one that cannot be recorded (malformed) is logged and acknowledged all the same.

    Only a database that is down keeps it unacknowledged (retried meanwhile), so it is not lost.
    """
    try:
        await record(topic, payload)
    except Exception as err:
        log.warning("could not record %s (%r); dropped", topic, err)


def _json_object(topic: str, payload: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object, or None (logged) when it is not one."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        log.warning("ignoring malformed JSON on %s", topic)
        return None
    return data if isinstance(data, dict) else None
