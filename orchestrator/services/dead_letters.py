"""Dead letters: messages an integration's workers could not deliver for good, kept in full to be seen, sent
again (to that integration's workers only) or deleted."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from worker_sdk import topics

from ..bus import Bus
from ..db import Database
from ..db.models import DeadLetter
from ..store import dead_letters as store


def public(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the API shows it: the message (parsed when it is JSON), why it failed, what was tried."""
    message: Any = letter.payload
    if letter.encoding == "utf-8":
        with contextlib.suppress(ValueError):
            message = json.loads(letter.payload)
    return {
        "id": letter.id,
        "at": letter.at,
        "event": letter.event,
        "device_id": letter.device_id or None,
        "topic": letter.topic,
        "message": message,
        "encoding": letter.encoding,
        "error": letter.error,
        "details": letter.details,
        "attempts": letter.attempts,
    }


class DeadLetterService:
    """List, replay and delete an integration's dead letters."""

    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.bus = bus

    async def page(self, app_id: str, integration_id: str, *, limit: int, offset: int) -> dict[str, Any]:
        """A page of dead letters, oldest first."""
        letters, total = await self.db.read(
            store.page, app_id=app_id, integration_id=integration_id, limit=limit, offset=offset
        )
        return {"items": [public(letter) for letter in letters], "total": total, "offset": offset, "limit": limit}

    async def get(self, app_id: str, integration_id: str, letter_id: int) -> dict[str, Any]:
        """One dead letter, or NotFoundError."""
        (letter,) = await self.db.read(store.chosen, app_id=app_id, integration_id=integration_id, ids=[letter_id])
        return public(letter)

    async def replay(self, app_id: str, integration_id: str, ids: list[int] | None) -> int:
        """Send these dead letters (all when `ids` is None) to the integration's workers again, as they first
        came; each leaves the list once the broker has it (if it fails again, it comes back as a new one).

        Workers that are stopped get them when they start (their broker session keeps them).
        """
        letters = await self.db.read(store.chosen, app_id=app_id, integration_id=integration_id, ids=ids)
        destination = topics.integration_topic(app_id, integration_id, topics.REPLAY)
        sent = []
        try:
            for letter in letters:
                body = {"topic": letter.topic, "payload": letter.payload, "encoding": letter.encoding}
                await self.bus.publish(destination, body)
                sent.append(letter.id)
        finally:  # what the broker took leaves the list, even if a later one could not be sent
            if sent:
                await self.db.run(store.remove, app_id=app_id, integration_id=integration_id, ids=sent)
        return len(sent)

    async def delete(self, app_id: str, integration_id: str, ids: list[int] | None) -> int:
        """Delete these dead letters (all when `ids` is None); how many went."""
        letters = await self.db.read(store.chosen, app_id=app_id, integration_id=integration_id, ids=ids)
        return await self.db.run(
            store.remove, app_id=app_id, integration_id=integration_id, ids=[letter.id for letter in letters]
        )
