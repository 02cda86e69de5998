"""Particle's event stream, for clients built for it: `GET /v1/events/{prefix}`, `/v1/devices/events/{prefix}`
and `/v1/devices/{device}/events/{prefix}`, with the application's key as `access_token` or a Bearer header.
Each named event, and each named downlink (a webhook's answer), comes as Particle sends it: `event: NAME`,
`data: {"data", "ttl", "published_at", "coreid"}`."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.security import HTTPAuthorizationCredentials
from sse_starlette import EventSourceResponse, ServerSentEvent

from ...errors import AuthenticationError
from ...events.log import LoggedEvent
from ...services import Principal
from ...services.events import StreamGap
from ..deps import MAX_ID, ServicesDep, bearer
from ..responses import resume_after, sse_answer

router = APIRouter(prefix="/v1", tags=["particle"])


async def particle_reader(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    access_token: Annotated[str | None, Query(description="An application key (ik.…) or a stream token")] = None,
    stream_token: Annotated[str | None, Query(description="A stream token (st.…), as our own stream takes it")] = None,
) -> Principal:
    """The application whose events the caller reads: a key (or stream token) says which. The admin token,
    which names no application, is refused; in a URL it would end up in logs."""
    token = credentials.credentials if credentials is not None else access_token or stream_token
    if not token:
        raise AuthenticationError("send access_token=<application key> or Authorization: Bearer <application key>")
    who = services.keys.authenticate_stream(token) if token.startswith("st.") else services.keys.authenticate(token)
    if who.admin or who.application_id is None:
        where = "" if credentials is not None else " It was in a URL, which ends up in logs: replace it."
        raise AuthenticationError(
            "the event stream is an application's: use one of its keys, not the admin token, which names none." + where
        )
    who.require(who.application_id, "messages:read")
    return who


ReaderDep = Annotated[Principal, Depends(particle_reader)]


def particle_event(event: LoggedEvent, prefix: str, device_id: str | None) -> ServerSentEvent | None:
    """A named event, or a named downlink (a webhook's `hook-response/…/0`), as Particle's stream writes it; None
    when the filters leave it out."""
    if device_id is not None and event.device_id != device_id:
        return None
    try:
        found = json.loads(event.data)
        if event.name == "downlink.deliver":  # an answer to the device, shown as Particle shows hook-response
            name, data = str(found["name"]), _payload_text(found)
            ttl, published_at = 60, event.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        else:
            publish = found["publish"]
            name, data = str(publish["name"]), publish.get("data", "")
            ttl, published_at = publish.get("ttl", 60), publish.get("published_at", "")
    except (ValueError, KeyError, TypeError):
        return None
    if not name.startswith(prefix):
        return None
    body = {"data": data, "ttl": ttl, "published_at": published_at, "coreid": event.device_id or ""}
    return ServerSentEvent(data=json.dumps(body), event=name, id=str(event.id))


def _payload_text(downlink: dict[str, object]) -> str:
    """A named downlink's bytes as text (Particle's events carry text)."""
    return base64.b64decode(str(downlink.get("frm_payload") or "")).decode("utf-8", "replace")


async def _stream(
    services: ServicesDep, who: Principal, prefix: str, device_id: str | None, last_event_id: str | None
) -> EventSourceResponse:
    app_id = str(who.application_id)
    after = resume_after(last_event_id, MAX_ID)
    prefixes = ("publish", "downlink.deliver")
    events = await services.events.stream(app_id, after=after, replay=False, prefixes=prefixes)

    async def sse() -> AsyncIterator[ServerSentEvent]:
        yield ServerSentEvent(comment="ok")
        async for event in events:
            if isinstance(event, StreamGap):  # said, not skipped: Particle has no such event, so clients ignore it
                yield ServerSentEvent(data=json.dumps({"message": event.message}), event="stream.gap")
            elif (found := particle_event(event, prefix, device_id)) is not None:
                yield found

    return sse_answer(sse(), services.events.settings.keepalive_seconds)


LastEventId = Annotated[str | None, Header(description="Resume after this event id (unlike Particle, nothing is lost)")]


@router.get("/events", response_class=EventSourceResponse)
@router.get("/events/{prefix:path}", response_class=EventSourceResponse)
async def events(services: ServicesDep, who: ReaderDep, prefix: str = "", last_event_id: LastEventId = None) -> object:
    """Named events of the key's application whose name starts with `prefix`."""
    return await _stream(services, who, prefix, None, last_event_id)


@router.get("/devices/events", response_class=EventSourceResponse)
@router.get("/devices/events/{prefix:path}", response_class=EventSourceResponse)
async def device_events(
    services: ServicesDep, who: ReaderDep, prefix: str = "", last_event_id: LastEventId = None
) -> object:
    """The same: on Particle, the events of the caller's own devices."""
    return await _stream(services, who, prefix, None, last_event_id)


@router.get("/devices/{device_id}/events", response_class=EventSourceResponse)
@router.get("/devices/{device_id}/events/{prefix:path}", response_class=EventSourceResponse)
async def one_device_events(
    device_id: str, services: ServicesDep, who: ReaderDep, prefix: str = "", last_event_id: LastEventId = None
) -> object:
    """Named events of one device whose name starts with `prefix`."""
    await services.devices.get(str(who.application_id), device_id)  # an unknown device is a 404, not silence
    return await _stream(services, who, prefix, device_id, last_event_id)
