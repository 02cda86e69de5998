"""The application's events: a live stream (SSE) that resumes from the log, and the history, page by page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from fastapi import APIRouter, Header, Query
from fastapi.responses import Response
from sse_starlette import EventSourceResponse, ServerSentEvent

from ...events.log import EventQuery
from ...schemas import StreamToken
from ...services.events import StreamGap
from ..deps import MAX_ID, PrincipalDep, ServicesDep, StreamReaderDep
from ..responses import resume_after, sse_answer

router = APIRouter(prefix="/api/v1/applications/{app_id}/events", tags=["events"])

HISTORY_EXAMPLE = {
    "items": [
        {
            "id": 4711,
            "name": "uplink",
            "time": "2026-11-25T10:00:00.123456Z",
            "device_id": "sensor-1",
            "integration_id": None,
            "data": {"end_device_ids": {"device_id": "sensor-1"}, "uplink_message": {"f_port": 1}},
        }
    ],
    "more": True,
}


def _prefixes(text: str) -> tuple[str, ...]:
    return tuple(item for item in text.split(",") if item)


@router.post("/tokens", status_code=201, response_model=StreamToken)
async def create_stream_token(
    app_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    ttl_seconds: int = Query(600, ge=10, le=86400, description="How long it opens the stream"),
) -> StreamToken:
    """A short-lived token that opens this application's event stream, and nothing else, for a browser's
    EventSource (which cannot send an Authorization header): `GET …/events?stream_token=…`."""
    token, expires = services.keys.stream_token(who, app_id, ttl_seconds)
    await services.events.require_application(app_id)
    return StreamToken(
        token=token,
        expires_at=datetime.fromtimestamp(expires, UTC),
        url=f"/api/v1/applications/{app_id}/events?stream_token={token}",
    )


@router.get("", response_class=EventSourceResponse)
async def stream_events(
    app_id: str,
    services: ServicesDep,
    who: StreamReaderDep,
    prefix: str = Query(
        "",
        description="Only events whose name starts with one of these (comma-separated), "
        "e.g. `uplink` or `downlink.,device.`",
    ),
    replay: bool = Query(False, description="Start with the most recent events (ORCH_EVENTS__STREAM_REPLAY_COUNT)"),
    last_event_id: str | None = Header(None, description="Resume after this event id (from the log)"),
) -> EventSourceResponse:
    """Server-sent events: `event:` is the event name, `data:` its JSON, `id:` its id in the log.

    With `Last-Event-ID` the stream starts with every logged event after that id (across restarts), then goes
    on live; `stream.gap` says when retention already removed some of them.
    """
    who.require(app_id, "messages:read")
    after = resume_after(last_event_id, MAX_ID)
    events = await services.events.stream(app_id, after=after, replay=replay, prefixes=_prefixes(prefix))

    async def sse() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="ok")
        async for event in events:
            if isinstance(event, StreamGap):
                yield ServerSentEvent(data=json.dumps({"message": event.message}), event="stream.gap")
            else:
                yield ServerSentEvent(data=event.data, event=event.name, id=str(event.id))

    return sse_answer(sse(), services.events.settings.keepalive_seconds)


@router.get(
    "/history",
    responses={200: {"content": {"application/json": {"example": HISTORY_EXAMPLE}}}},
)
async def event_history(
    app_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    after_id: int | None = Query(None, ge=0, le=MAX_ID, description="Only events with a larger id"),
    before_id: int | None = Query(None, ge=0, le=MAX_ID, description="Only events with a smaller id"),
    since: datetime | None = Query(None, description="Only events logged at or after this time (RFC 3339)"),
    until: datetime | None = Query(None, description="Only events logged before this time (RFC 3339)"),
    type: str = Query("", description="Event name prefixes, comma-separated, e.g. `uplink` or `downlink.,device.`"),
    device_id: str | None = Query(None, description="Only this device's events"),
    integration_id: str | None = Query(None, description="Only this integration's events"),
    order: str = Query("desc", pattern="^(asc|desc)$", description="`desc`: newest first; `asc`: oldest first"),
    limit: int = Query(100, ge=1, le=1000),
) -> Response:
    """Logged events, a page at a time. Page back with `before_id` = the last id of a `desc` page, or forward
    with `after_id` = the last id of an `asc` page, while `more` is true."""
    who.require(app_id, "messages:read")
    query = EventQuery(
        after_id=after_id,
        before_id=before_id,
        since=since,
        until=until,
        prefixes=_prefixes(type),
        device_id=device_id,
        integration_id=integration_id,
        limit=limit,
        newest_first=order == "desc",
    )
    return Response(await services.events.history(app_id, query), media_type="application/json")
