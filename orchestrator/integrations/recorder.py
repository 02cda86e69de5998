"""Records what workers report: delivery history, errors, counters per minute, and readiness."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..db.models import Integration, IntegrationActivity, IntegrationStats, utcnow
from ..handler.core import Handler

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
    counts = {name: int(delta.get(name, 0) or 0) for name in ("delivered", "failed", "retried")}
    if any(value < 0 for value in counts.values()):
        return
    record.delivered += counts["delivered"]
    record.failed += counts["failed"]
    record.retried += counts["retried"]
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


class IntegrationRecorder:
    """The handler's listener for integration topics."""

    def __init__(self, handler: Handler, on_status_change: Callable[[], None]) -> None:
        self.handler = handler
        self.on_status_change = on_status_change
        self.worker_states: dict[tuple[str, str], dict[int, str]] = {}

    def ready(self, app_id: str, integration_id: str, replicas: int) -> bool:
        """True when every replica said it is running."""
        states = self.worker_states.get((app_id, integration_id), {})
        return all(states.get(replica) == "running" for replica in range(replicas))

    def forget(self, app_id: str, integration_id: str) -> None:
        """Drop what workers said (before a restart, so old reports do not count)."""
        self.worker_states.pop((app_id, integration_id), None)

    async def on_integration_event(self, app_id: str, integration_id: str, name: str, payload: dict[str, Any]) -> None:
        kind = name.removeprefix("integration.")
        if kind not in RECORDED_KINDS:
            return
        details = payload.get("details") if isinstance(payload.get("details"), dict) else {}
        await self.handler.run_db(
            record_activity,
            app_id=app_id,
            integration_id=integration_id,
            kind=kind,
            message=str(payload.get("message", "")),
            details=details or {},
        )

    async def on_integration_stats(self, app_id: str, integration_id: str, delta: dict[str, Any]) -> None:
        await self.handler.run_db(add_stats, app_id=app_id, integration_id=integration_id, delta=delta)

    async def on_worker_status(self, app_id: str, integration_id: str, replica: int, state: str) -> None:
        self.worker_states.setdefault((app_id, integration_id), {})[replica] = state
        self.on_status_change()
