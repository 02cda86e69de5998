"""The event stream and the event history, both read from the durable log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from ..bus import Bus
from ..config import EventSettings
from ..db import Database
from ..events.log import EventLog, EventQuery, LoggedEvent
from ..store import applications as application_store

CATCH_UP_PAGE = 500


@dataclass(frozen=True)
class StreamGap:
    """The stream cannot give every event the client asked for: retention removed some, or the id is unknown."""

    message: str


class EventService:
    """Follows an application's events live (resuming from any id the log still holds) and pages through them."""

    def __init__(self, db: Database, log: EventLog, bus: Bus, settings: EventSettings) -> None:
        self.db = db
        self.log = log
        self.bus = bus
        self.settings = settings

    async def require_application(self, app_id: str) -> None:
        """NotFoundError naming the application unless it exists."""
        await self.db.read(application_store.get_application, app_id)

    async def stream(
        self, app_id: str, *, after: int | None, replay: bool, prefixes: tuple[str, ...]
    ) -> AsyncIterator[LoggedEvent | StreamGap]:
        """Events after `after` (or the recent ones with `replay`, or only new ones), then live events.

        NotFoundError for an unknown application is raised before the first event.
        """
        await self.require_application(app_id)
        return self._follow(app_id, after, replay, EventQuery(prefixes=prefixes, limit=CATCH_UP_PAGE))

    async def _follow(
        self, app_id: str, after: int | None, replay: bool, query: EventQuery
    ) -> AsyncIterator[LoggedEvent | StreamGap]:
        with self.bus.listening(app_id) as live:  # before reading the log, so nothing falls between the two
            last, gap = await self._start(app_id, after, replay, query)
            if gap is not None:
                yield gap
            while True:
                async for event in self._catch_up(app_id, last, query):
                    last = event.id
                    yield event
                while (new := await live.get()) is not None:
                    if new.id > last:
                        last = new.id
                        if query.matches(new):
                            yield new
                # The listener fell behind and dropped events: read them from the log instead.

    async def _start(
        self, app_id: str, after: int | None, replay: bool, query: EventQuery
    ) -> tuple[int, StreamGap | None]:
        """Where the stream starts, and a gap if the log cannot serve that start."""
        newest = await self.log.newest_id()
        if after is None:
            if not replay or not self.settings.stream_replay_count:
                return newest, None
            recent_query = EventQuery(
                prefixes=query.prefixes, limit=self.settings.stream_replay_count, newest_first=True
            )
            recent = await self.log.read(app_id, recent_query)
            return (recent[-1].id - 1 if recent else newest), None
        if after > newest:
            return newest, StreamGap(f"event {after} is unknown to this log (newer than its newest, {newest})")
        pruned = await self.log.pruned_through(app_id)
        if after < pruned:
            return after, StreamGap(f"events up to {pruned} were removed by retention; the stream goes on from there")
        return after, None

    async def _catch_up(self, app_id: str, after: int, query: EventQuery) -> AsyncIterator[LoggedEvent]:
        """Every logged event after an id, oldest first, page by page."""
        while page := await self.log.read(app_id, replace(query, after_id=after)):
            for event in page:
                yield event
            after = page[-1].id

    async def history(self, app_id: str, query: EventQuery) -> str:
        """One page of the application's events as JSON text: `{"items": [...], "more": bool}`."""
        await self.db.read(application_store.get_application, app_id)
        page = await self.log.read(app_id, replace(query, limit=query.limit + 1))
        items = ",".join(history_item(event) for event in page[: query.limit])
        return f'{{"items":[{items}],"more":{json.dumps(len(page) > query.limit)}}}'


def history_item(event: LoggedEvent) -> str:
    """One event as the history API shows it; the event's own JSON is embedded as logged, not parsed again."""
    fields = {
        "id": event.id,
        "name": event.name,
        "time": event.time.isoformat().replace("+00:00", "Z"),
        "device_id": event.device_id,
        "integration_id": event.integration_id,
    }
    return json.dumps(fields, separators=(",", ":"))[:-1] + f',"data":{event.data}}}'
