"""The application's event stream (SSE) with `prefix` filter and Last-Event-ID resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from ...handler import registry
from ..deps import OrchestratorDep, PrincipalDep

router = APIRouter(prefix="/api/v1/applications/{app_id}/events", tags=["events"])

GAP_MESSAGE = "some events were lost (the buffer moved on or the orchestrator restarted); resync if needed"


@router.get("", response_class=EventSourceResponse)
async def stream_events(
    app_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    prefix: str = Query("", description="Only events whose name starts with this, e.g. `uplink` or `downlink.`"),
    replay: bool = Query(False, description="Start with every buffered event"),
    last_event_id: str | None = Header(None, description="Resume after this event id"),
) -> EventSourceResponse:
    """Server-sent events: `event:` is the event name, `data:` its JSON, `id:` the resume point."""
    who.require(app_id, "messages:read")
    await orch.handler.run_db(registry.get_application, app_id)
    after: int | None = None
    if last_event_id and last_event_id.strip().isdigit():
        after = int(last_event_id)
    elif replay:
        after = orch.hub.boot_id
    prefixes = [item for item in prefix.split(",") if item] or [""]

    async def events() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="ok")
        async for event in orch.hub.listen(app_id, after):
            if event is None:
                yield ServerSentEvent(data=json.dumps({"message": GAP_MESSAGE}), event="stream.gap")
            elif any(event.name.startswith(item) for item in prefixes):
                yield ServerSentEvent(data=event.data, event=event.name, id=str(event.id))

    return EventSourceResponse(
        events(),
        ping=orch.settings.handler.keepalive_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
