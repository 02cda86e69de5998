"""Answers written straight from plain data that a service already shaped as the route's declared model."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from ..errors import ValidationFailed

# As pydantic writes them: UTC times end in Z.
OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC


def page_answer(page: dict[str, Any]) -> Response:
    """A page of items as JSON, without FastAPI validating and serializing it again through the response model.

    For a page of 100 integrations that second pass cost more than reading them from the database (2.4 ms of
    4 ms); the route still declares the model, so the OpenAPI document is the same.
    """
    return Response(orjson.dumps(page, option=OPTIONS), media_type="application/json")


def resume_after(last_event_id: str | None, largest: int) -> int | None:
    """The log id a stream resumes after, from its Last-Event-ID header (none: from now on)."""
    if not last_event_id or not last_event_id.strip():
        return None
    if not re.fullmatch(r"[0-9]+", last_event_id.strip()):  # streams send only digits: else a client's mistake
        raise ValidationFailed([{"field": "header.last-event-id", "message": "must be the id of an event (digits)"}])
    after = int(last_event_id)
    if after > largest:
        raise ValidationFailed([{"field": "header.last-event-id", "message": f"at most {largest}"}])
    return after


def sse_answer(events: AsyncIterator[ServerSentEvent], keepalive_seconds: float) -> EventSourceResponse:
    """A server-sent event stream that proxies do not buffer or cache, with a ping to notice dead connections."""
    return EventSourceResponse(
        events, ping=keepalive_seconds, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
