"""The event stream behind SSE: a bounded buffer per application, so a reconnecting client resumes."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

LISTENER_QUEUE_SIZE = 10_000


@dataclass(frozen=True)
class StreamEvent:
    """One event: a monotonically increasing id, a dotted name, and its JSON text."""

    id: int
    name: str
    data: str


class EventHub:
    """Keeps the last N events of each application and fans new ones out to listeners.

    Ids start at the boot time in microseconds and count up, so ids stay increasing across restarts
    and an id from before a restart is recognised as older than everything buffered.
    """

    def __init__(self, buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self._buffers: dict[str, deque[StreamEvent]] = {}
        self._listeners: dict[str, set[asyncio.Queue[StreamEvent | None]]] = {}
        self._next_id = int(time.time() * 1_000_000)
        self._boot_id = self._next_id
        self._evicted: dict[str, int] = {}  # per application: id of the newest event pushed out

    @property
    def boot_id(self) -> int:
        """An id older than every event of this process: listen from it to replay the whole buffer."""
        return self._boot_id

    def publish(self, app_id: str, name: str, data: dict[str, Any] | str) -> StreamEvent:
        """Add an event (call from the event loop)."""
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        self._next_id += 1
        event = StreamEvent(self._next_id, name, text)
        buffer = self._buffers.setdefault(app_id, deque(maxlen=self.buffer_size))
        if len(buffer) == self.buffer_size:
            self._evicted[app_id] = buffer[0].id
        buffer.append(event)
        for queue in list(self._listeners.get(app_id, ())):
            if queue.qsize() < LISTENER_QUEUE_SIZE:
                queue.put_nowait(event)
            elif queue.qsize() == LISTENER_QUEUE_SIZE:
                queue.put_nowait(None)  # one marker: this listener is too slow and lost events
        return event

    def backlog(self, app_id: str, after: int | None) -> tuple[list[StreamEvent], bool]:
        """Buffered events after an id, and whether some were already dropped from the buffer (a gap)."""
        if after is None:
            return [], False
        events = [event for event in self._buffers.get(app_id, ()) if event.id > after]
        # Events before this process started, or pushed out of the buffer, cannot be replayed.
        gap = after < self._evicted.get(app_id, 0) or after < self._boot_id
        return events, gap

    def subscribe(self, app_id: str) -> asyncio.Queue[StreamEvent | None]:
        """A queue that receives the application's new events until `unsubscribe`."""
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()
        self._listeners.setdefault(app_id, set()).add(queue)
        return queue

    def unsubscribe(self, app_id: str, queue: asyncio.Queue[StreamEvent | None]) -> None:
        """Stop feeding a queue."""
        self._listeners.get(app_id, set()).discard(queue)

    async def listen(self, app_id: str, after: int | None) -> AsyncIterator[StreamEvent | None]:
        """Buffered events after `after`, then live ones; yields None once if the listener lost events."""
        queue = self.subscribe(app_id)
        try:
            events, gap = self.backlog(app_id, after)
            if gap:
                yield None
            last = after or 0
            if after is None:
                last = self._next_id
            for event in events:
                last = event.id
                yield event
            while True:
                item = await queue.get()
                if item is None:
                    yield None
                elif item.id > last:
                    last = item.id
                    yield item
        finally:
            self.unsubscribe(app_id, queue)
