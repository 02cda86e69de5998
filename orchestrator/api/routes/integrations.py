"""Integrations: create from a template (or from a Particle webhook definition), configure, pause, restart, watch
(status, logs, activity)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request, status
from sse_starlette import EventSourceResponse, ServerSentEvent

from ...runtime.base import WorkerState
from ...schemas import (
    ActivityPublic,
    IntegrationCreate,
    IntegrationCreated,
    IntegrationPublic,
    IntegrationTest,
    IntegrationUpdate,
    Page,
    TestOutcome,
    ValidationResult,
)
from ...templates import particle
from ..deps import MAX_OFFSET, PrincipalDep, ServicesDep
from ..responses import page_answer

router = APIRouter(prefix="/api/v1/applications/{app_id}/integrations", tags=["integrations"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=IntegrationCreated)
async def create_integration(
    app_id: str, body: IntegrationCreate, services: ServicesDep, who: PrincipalDep
) -> IntegrationCreated:
    """Create from a template id and field values; the worker starts right away (if enabled)."""
    who.require(app_id, "manage")
    return await services.integrations.create(app_id, body)


@router.post("/validate", response_model=ValidationResult)
async def validate_integration(
    app_id: str, body: IntegrationCreate, services: ServicesDep, who: PrincipalDep
) -> ValidationResult:
    """Check a configuration without creating anything: every problem, field by field."""
    who.require(app_id, "manage")
    return await services.integrations.validate(app_id, body)


@router.post(
    "/import/particle",
    status_code=status.HTTP_201_CREATED,
    response_model=IntegrationCreated,
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": particle.DEFINITION_SCHEMA, "example": particle.EXAMPLE}}
        }
    },
)
async def import_particle_webhook(
    app_id: str, request: Request, services: ServicesDep, who: PrincipalDep
) -> IntegrationCreated:
    """Create a webhook integration from a Particle webhook definition (the JSON `particle webhook create` takes);
    a 422 names each Particle field it cannot take."""
    who.require(app_id, "manage")
    return await services.integrations.import_particle(app_id, await request.body())


@router.get("", response_model=Page[IntegrationPublic])
async def list_integrations(
    app_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    state: WorkerState | None = Query(None, description="Only integrations in this state, e.g. failed"),
) -> object:
    """A page of the application's integrations, ordered by id, with status and counters."""
    who.require(app_id, "integrations:read")
    return page_answer(await services.integrations.page(app_id, limit=limit, offset=offset, state=state))


@router.get("/{integration_id}", response_model=IntegrationPublic)
async def get_integration(
    app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep
) -> IntegrationPublic:
    """One integration: configuration without secrets, status, counters."""
    who.require(app_id, "integrations:read")
    return await services.integrations.get(app_id, integration_id)


@router.patch("/{integration_id}", response_model=IntegrationPublic)
async def update_integration(
    app_id: str, integration_id: str, body: IntegrationUpdate, services: ServicesDep, who: PrincipalDep
) -> IntegrationPublic:
    """Change name, config (merged; omitted secrets kept), replicas or resources; the worker is replaced."""
    who.require(app_id, "manage")
    return await services.integrations.update(app_id, integration_id, body)


@router.delete("/{integration_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_integration(app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep) -> None:
    """Delete: the worker is stopped and removed before this returns."""
    who.require(app_id, "manage")
    await services.integrations.delete(app_id, integration_id)


@router.post("/{integration_id}/enable", response_model=IntegrationPublic)
async def enable_integration(
    app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep
) -> IntegrationPublic:
    """Start it again; messages that arrived while it was disabled are delivered (persistent session)."""
    who.require(app_id, "manage")
    return await services.integrations.set_enabled(app_id, integration_id, True)


@router.post("/{integration_id}/disable", response_model=IntegrationPublic)
async def disable_integration(
    app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep
) -> IntegrationPublic:
    """Pause: the worker stops, the configuration stays."""
    who.require(app_id, "manage")
    return await services.integrations.set_enabled(app_id, integration_id, False)


@router.post("/{integration_id}/restart", response_model=IntegrationPublic)
async def restart_integration(
    app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep
) -> IntegrationPublic:
    """Replace the worker with a fresh one."""
    who.require(app_id, "manage")
    return await services.integrations.restart(app_id, integration_id)


@router.get(
    "/{integration_id}/logs",
    response_model=None,
    responses={
        200: {
            "description": "The lines as JSON; with `follow`, server-sent events (`event: log`)",
            "content": {
                "application/json": {"schema": {"type": "object", "properties": {"lines": {"type": "array"}}}},
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "properties": {"event": {"const": "log"}, "data": {"type": "string"}},
                    }
                },
            },
        }
    },
)
async def integration_logs(
    app_id: str,
    integration_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    tail: int = Query(200, ge=1, le=5000),
    follow: bool = Query(False, description="Keep streaming new lines (SSE)"),
) -> dict[str, list[str]] | EventSourceResponse:
    """The worker's log: the last lines, or (follow) the last lines then new ones as server-sent events."""
    who.require(app_id, "integrations:read")
    lines, new_lines = await services.integrations.logs(app_id, integration_id, tail)
    if not follow:
        return {"lines": lines}

    async def stream() -> AsyncIterator[ServerSentEvent]:
        for line in lines:
            yield ServerSentEvent(data=line, event="log")
        async for line in new_lines:
            yield ServerSentEvent(data=line, event="log")

    return EventSourceResponse(stream(), ping=services.events.settings.keepalive_seconds)


@router.get("/{integration_id}/activity", response_model=list[ActivityPublic])
async def integration_activity(
    app_id: str,
    integration_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    kind: str | None = Query(None, pattern="^(delivery|error|retry)$"),
    limit: int = Query(50, ge=1, le=200),
) -> object:
    """Recent deliveries, retries and errors, newest first, with request and response excerpts."""
    who.require(app_id, "integrations:read")
    return await services.integrations.activity(app_id, integration_id, kind, limit)


@router.get("/{integration_id}/stats")
async def integration_stats(
    app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep, hours: int = Query(6, ge=1, le=168)
) -> dict[str, object]:
    """Delivered, failed and retried per minute over the last hours (minutes without traffic left out)."""
    who.require(app_id, "integrations:read")
    return await services.integrations.stats(app_id, integration_id, hours)


@router.post("/{integration_id}/test", response_model=TestOutcome)
async def test_integration(
    app_id: str, integration_id: str, services: ServicesDep, who: PrincipalDep, body: IntegrationTest | None = None
) -> TestOutcome:
    """Send a sample uplink through this integration only, and report what happened (delivery or error)."""
    who.require(app_id, "manage")
    return await services.integrations.test(app_id, integration_id, body or IntegrationTest())
