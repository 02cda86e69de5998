"""Integrations: create from a template, configure, pause, restart, watch (status, logs, activity)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Query, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from sse_starlette import EventSourceResponse, ServerSentEvent

from worker_sdk import topics
from worker_sdk.messages import end_device_ids, now_iso
from worker_sdk.redact import Redactor

from ...db.models import Integration, IntegrationActivity, IntegrationStats, utcnow
from ...errors import ConflictError, ValidationFailed
from ...handler import registry
from ...integrations import service
from ...schemas import (
    ActivityPublic,
    ActualState,
    IntegrationCreate,
    IntegrationPublic,
    IntegrationTest,
    IntegrationUpdate,
    Page,
    TestOutcome,
    ValidationResult,
)
from ..deps import OrchestratorDep, PrincipalDep

router = APIRouter(prefix="/api/v1/applications/{app_id}/integrations", tags=["integrations"])


async def _public(orch: OrchestratorDep, app_id: str, integration_id: str) -> IntegrationPublic:
    record = await orch.handler.run_db(service.get_integration, app_id=app_id, integration_id=integration_id)
    return service.to_public(record, orch.box)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=IntegrationPublic)
async def create_integration(
    app_id: str, body: IntegrationCreate, orch: OrchestratorDep, who: PrincipalDep
) -> IntegrationPublic:
    """Create from a template id and field values; the worker starts right away (if enabled)."""
    who.require(app_id, "manage")
    record = await orch.handler.run_db(
        service.create_integration, templates=orch.templates, box=orch.box, app_id=app_id, data=body
    )
    await orch.refresh_keys()
    await orch.reconciler.reconcile_one(app_id, record.id)
    return await _public(orch, app_id, record.id)


@router.post("/validate", response_model=ValidationResult)
async def validate_integration(
    app_id: str, body: IntegrationCreate, orch: OrchestratorDep, who: PrincipalDep
) -> ValidationResult:
    """Check a configuration without creating anything: every problem, field by field."""
    who.require(app_id, "manage")
    await orch.handler.run_db(registry.get_application, app_id)
    template = orch.templates.get(body.template_id)
    try:
        service.resolve(template, body.config)
    except ValidationFailed as err:
        return ValidationResult(valid=False, errors=err.errors)
    return ValidationResult(valid=True)


@router.get("", response_model=Page[IntegrationPublic])
async def list_integrations(
    app_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    state: ActualState | None = Query(None, description="Only integrations in this state, e.g. failed"),
) -> object:
    """A page of the application's integrations, ordered by id, with status and counters."""
    who.require(app_id, "integrations:read")
    records, total = await orch.handler.run_db(
        service.page_integrations, app_id=app_id, limit=limit, offset=offset, state=state
    )
    items = [service.to_public(record, orch.box) for record in records]
    return {"items": items, "total": total, "offset": offset, "limit": limit}


@router.get("/{integration_id}", response_model=IntegrationPublic)
async def get_integration(
    app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep
) -> IntegrationPublic:
    """One integration: configuration without secrets, status, counters."""
    who.require(app_id, "integrations:read")
    return await _public(orch, app_id, integration_id)


@router.patch("/{integration_id}", response_model=IntegrationPublic)
async def update_integration(
    app_id: str, integration_id: str, body: IntegrationUpdate, orch: OrchestratorDep, who: PrincipalDep
) -> IntegrationPublic:
    """Change name, config (merged; omitted secrets kept), replicas or resources; the worker is replaced."""
    who.require(app_id, "manage")
    await orch.handler.run_db(
        service.update_integration,
        templates=orch.templates,
        box=orch.box,
        app_id=app_id,
        integration_id=integration_id,
        data=body,
    )
    await orch.reconciler.reconcile_one(app_id, integration_id)
    return await _public(orch, app_id, integration_id)


@router.delete("/{integration_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_integration(app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep) -> None:
    """Delete: the worker is stopped and removed before this returns."""
    who.require(app_id, "manage")
    record = await orch.handler.run_db(service.delete_integration, app_id=app_id, integration_id=integration_id)
    await orch.reconciler.remove(record)
    await orch.refresh_keys()


async def _set_enabled(orch: OrchestratorDep, app_id: str, integration_id: str, enabled: bool) -> IntegrationPublic:
    await orch.handler.run_db(service.set_enabled, app_id=app_id, integration_id=integration_id, enabled=enabled)
    await orch.reconciler.reconcile_one(app_id, integration_id)
    return await _public(orch, app_id, integration_id)


@router.post("/{integration_id}/enable", response_model=IntegrationPublic)
async def enable_integration(
    app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep
) -> IntegrationPublic:
    """Start it again; messages that arrived while it was disabled are delivered (persistent session)."""
    who.require(app_id, "manage")
    return await _set_enabled(orch, app_id, integration_id, True)


@router.post("/{integration_id}/disable", response_model=IntegrationPublic)
async def disable_integration(
    app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep
) -> IntegrationPublic:
    """Pause: the worker stops, the configuration stays."""
    who.require(app_id, "manage")
    return await _set_enabled(orch, app_id, integration_id, False)


@router.post("/{integration_id}/restart", response_model=IntegrationPublic)
async def restart_integration(
    app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep
) -> IntegrationPublic:
    """Replace the worker with a fresh one."""
    who.require(app_id, "manage")
    record = await orch.handler.run_db(service.get_integration, app_id=app_id, integration_id=integration_id)
    orch.reconciler.request_restart(record.runtime_name)
    await orch.reconciler.reconcile_one(app_id, integration_id)
    return await _public(orch, app_id, integration_id)


async def _redactor(orch: OrchestratorDep, record: Integration) -> Redactor:
    secrets = [str(value) for value in orch.box.open(record.secrets_encrypted, {}).values()]
    return Redactor([*secrets, orch.box.open(record.key_encrypted)])


@router.get("/{integration_id}/logs", response_model=None)
async def integration_logs(
    app_id: str,
    integration_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    tail: int = Query(200, ge=1, le=5000),
    follow: bool = Query(False, description="Keep streaming new lines (SSE)"),
) -> dict[str, list[str]] | EventSourceResponse:
    """The worker's log: the last lines, or (follow) the last lines then new ones as server-sent events."""
    who.require(app_id, "integrations:read")
    record = await orch.handler.run_db(service.get_integration, app_id=app_id, integration_id=integration_id)
    redactor = await _redactor(orch, record)
    lines = [redactor.text(line) for line in await orch.runtime.logs(record.runtime_name, tail)]
    if not follow:
        return {"lines": lines}

    async def stream() -> AsyncIterator[ServerSentEvent]:
        for line in lines:
            yield ServerSentEvent(data=line, event="log")
        async for line in orch.runtime.follow(record.runtime_name):
            yield ServerSentEvent(data=redactor.text(line), event="log")

    return EventSourceResponse(stream(), ping=orch.settings.handler.keepalive_seconds)


@router.get("/{integration_id}/activity", response_model=list[ActivityPublic])
async def integration_activity(
    app_id: str,
    integration_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    kind: str | None = Query(None, pattern="^(delivery|error|retry)$"),
    limit: int = Query(50, ge=1, le=200),
) -> object:
    """Recent deliveries, retries and errors, newest first, with request and response excerpts."""
    who.require(app_id, "integrations:read")

    def load(session: Session) -> list[IntegrationActivity]:
        service.get_integration(session, app_id, integration_id)
        query = select(IntegrationActivity).where(
            IntegrationActivity.application_id == app_id, IntegrationActivity.integration_id == integration_id
        )
        if kind:
            query = query.where(IntegrationActivity.kind == kind)
        return list(session.scalars(query.order_by(IntegrationActivity.id.desc()).limit(limit)))

    return await orch.handler.run_db(load)


@router.get("/{integration_id}/stats")
async def integration_stats(
    app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep, hours: int = Query(6, ge=1, le=168)
) -> dict[str, object]:
    """Delivered, failed and retried per minute over the last hours (minutes without traffic left out)."""
    who.require(app_id, "integrations:read")

    def load(session: Session) -> list[IntegrationStats]:
        service.get_integration(session, app_id, integration_id)
        since = utcnow() - timedelta(hours=hours)
        return list(
            session.scalars(
                select(IntegrationStats)
                .where(
                    IntegrationStats.application_id == app_id,
                    IntegrationStats.integration_id == integration_id,
                    IntegrationStats.minute >= since,
                )
                .order_by(IntegrationStats.minute)
            )
        )

    buckets = await orch.handler.run_db(load)
    return {
        "minutes": [
            {"minute": b.minute, "delivered": b.delivered, "failed": b.failed, "retried": b.retried} for b in buckets
        ]
    }


TEST_TIMEOUT_SECONDS = 20.0


@router.post("/{integration_id}/test", response_model=TestOutcome)
async def test_integration(
    app_id: str, integration_id: str, orch: OrchestratorDep, who: PrincipalDep, body: IntegrationTest | None = None
) -> TestOutcome:
    """Send a sample uplink through this integration only, and report what happened (delivery or error)."""
    who.require(app_id, "manage")
    body = body or IntegrationTest()
    record = await orch.handler.run_db(service.get_integration, app_id=app_id, integration_id=integration_id)
    if not record.enabled or record.actual_state != "running":
        raise ConflictError(f"integration {integration_id} is {record.actual_state}, not running; enable it first")
    device_id = body.device_id
    if device_id is None:
        devices, _ = await orch.handler.run_db(registry.list_devices, app_id=app_id, limit=1, offset=0)
        device_id = devices[0].device_id if devices else "test-device"
    device = orch.handler.device(app_id, device_id) or {}
    correlation_id = f"test:{uuid.uuid4().hex}"
    received_at = now_iso()
    uplink = {
        "end_device_ids": end_device_ids(app_id, device_id, device.get("dev_eui"), device.get("join_eui")),
        "correlation_ids": [correlation_id],
        "received_at": received_at,
        "uplink_message": {
            "f_port": body.f_port,
            "frm_payload": body.frm_payload,
            "decoded_payload": body.decoded_payload,
            "received_at": received_at,
        },
    }
    queue = orch.hub.subscribe(app_id)  # listen before sending, so the answer cannot slip by
    try:
        await orch.handler.mqtt.publish(topics.integration_topic(app_id, integration_id, "test"), uplink)
        answer = await _wait_for_answer(queue, integration_id, correlation_id)
    finally:
        orch.hub.unsubscribe(app_id, queue)
    if answer is None:
        return TestOutcome(
            outcome="no answer",
            message=f"no delivery or error within {TEST_TIMEOUT_SECONDS:.0f} s; "
            "a target that keeps failing is still being retried: see the activity",
            event=None,
            uplink=uplink,
        )
    outcome = "delivered" if answer["event"] == "delivery" else "failed"
    return TestOutcome(outcome=outcome, message=str(answer.get("message", "")), event=answer, uplink=uplink)


async def _wait_for_answer(
    queue: asyncio.Queue[Any], integration_id: str, correlation_id: str
) -> dict[str, Any] | None:
    """The integration's delivery or final error event for this correlation id (retries are skipped)."""
    try:
        async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
            while True:
                event = await queue.get()
                if event is None or event.name not in ("integration.delivery", "integration.error"):
                    continue
                data = json.loads(event.data)
                ids = (data.get("details") or {}).get("correlation_ids") or []
                if data.get("integration_id") == integration_id and correlation_id in ids:
                    return data
    except TimeoutError:
        return None
