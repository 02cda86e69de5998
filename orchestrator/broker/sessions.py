"""Worker sessions after a broker restart: subscriptions the broker forgot are made again before anything is published.

Mosquitto 2.0 restores persistent sessions, their queued messages and plain subscriptions from its saved
state, but not shared subscriptions, and every worker subscribes shared. A connected worker subscribes
again by itself when it reconnects; a paused integration's worker does not run, so nothing would reach
its session until it is resumed. Each worker publishes its filters (retained, `.../session/{replica}`);
after every (re)connect the orchestrator waits a moment for running workers to come back, then connects
as each replica that did not (with that integration's own key) and subscribes the same filters again.
Only then does the event outbox publish, so no message goes out to a session that lost its subscriptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.mqtt import MqttConnection, MqttError

from ..bus import Bus
from ..db import Database
from ..db.models import ApiKey, Integration
from ..errors import OrchestratorError
from ..secretbox import SecretBox
from .managed import ManagedBroker

log = logging.getLogger(__name__)
ReplicaKey = tuple[str, str, int]  # application, integration, replica
RETURN_GRACE_SECONDS = 3.0  # how long running workers get to reconnect and subscribe by themselves


class WorkerSessions:
    """Knows every replica's subscription filters and makes them again where the broker lost them."""

    def __init__(self, db: Database, bus: Bus, box: SecretBox, broker: ManagedBroker | None) -> None:
        self.db = db
        self.bus = bus
        self.box = box
        self.broker = broker
        self.restored = 0  # replica sessions whose subscriptions were made again
        self._filters: dict[ReplicaKey, list[str]] = {}  # what each replica subscribes
        self._running_in: dict[ReplicaKey, int] = {}  # the last bus connection during which it said it runs
        self._ready_for = 0  # the bus connection after which the sessions are known to be complete
        bus.subscribe(topics.integration_topic("+", "+", "session/+"), self._on_session)
        # Live statuses only (not the retained ones every connect brings): each says a worker is connected now.
        bus.subscribe(topics.integration_topic("+", "+", "status/#"), self._on_status, retained=False)

    def _replica(self, topic: str, kind: str) -> ReplicaKey | None:
        parsed = topics.parse(topic)
        if parsed is None or parsed.integration_id is None or not parsed.suffix.startswith(f"{kind}/"):
            return None
        replica = parsed.suffix.removeprefix(f"{kind}/")
        return (parsed.app_id, parsed.integration_id, int(replica)) if replica.isdigit() else None

    async def _on_session(self, topic: str, payload: bytes) -> None:
        key = self._replica(topic, "session")
        if key is None:
            return
        try:
            filters = [str(item) for item in json.loads(payload)["filters"]] if payload else []
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("ignoring a malformed session description on %s", topic)
            return
        if filters:
            self._filters[key] = filters
        else:
            self._filters.pop(key, None)  # cleared: the replica is gone for good

    async def _on_status(self, topic: str, payload: bytes) -> None:
        key = self._replica(topic, "status")
        if key is None:
            return
        try:
            running = bool(payload) and json.loads(payload).get("state") == "running"
        except (ValueError, AttributeError, RecursionError):
            running = False
        if running:
            self._running_in[key] = self.bus.connections

    async def ready(self, connection: int) -> None:
        """Return once the sessions are complete for this bus connection (restoring them if needed)."""
        if self._ready_for >= connection:
            return
        await self._restore(connection)
        self._ready_for = connection

    async def _restore(self, connection: int) -> None:
        records = await self.db.run(_integrations_with_keys)
        enabled = {(r.application_id, r.id) for r, _ in records if r.enabled}
        keys = {(r.application_id, r.id): key for r, key in records}
        deadline = time.monotonic() + RETURN_GRACE_SECONDS
        while time.monotonic() < deadline and any(
            self._running_in.get(key, 0) < connection for key in self._filters if key[:2] in enabled
        ):
            await asyncio.sleep(0.1)
        missing = [key for key in self._filters if self._running_in.get(key, 0) < connection and key[:2] in keys]
        results = await asyncio.gather(*(self._subscribe_as(key, self._filters[key], keys[key[:2]]) for key in missing))
        count = sum(results)
        if count:
            self.restored += count
            log.info("made the subscriptions of %d worker sessions again (their workers are not connected)", count)
            if self.broker is not None:
                self.broker.save_soon()

    async def _subscribe_as(self, key: ReplicaKey, filters: list[str], sealed_key: str) -> bool:
        app_id, integration_id, replica = key
        try:
            secret = self.box.open(sealed_key)
        except OrchestratorError as err:
            log.warning("cannot restore the session of %s/%s: %s", app_id, integration_id, err.detail)
            return False
        # The replica's own client id and key: the broker hands us its session, and we leave it as we found
        # it but for the subscriptions (messages it sends meanwhile are not acknowledged, so they stay queued).
        connection = MqttConnection(
            self.bus.url,
            topics.worker_client_id(app_id, integration_id, replica),
            username=".".join(secret.split(".")[:2]),
            password=secret,
            receive_maximum=1,
            acknowledge=False,
        )
        for topic_filter in filters:
            connection.subscribe(topic_filter, _ignore)
        try:
            await connection.connect(timeout=10)
            await asyncio.sleep(0.1)  # let the broker take the subscriptions before we leave
            await connection.disconnect()
        except (MqttError, TimeoutError, OSError) as err:
            log.warning("could not restore the session of %s/%s replica %d: %s", app_id, integration_id, replica, err)
            return False
        return True


async def _ignore(topic: str, payload: bytes) -> None:
    return None


def _integrations_with_keys(session: Session) -> list[tuple[Integration, str]]:
    """Every integration with its sealed worker key."""
    rows = session.execute(select(Integration, Integration.key_encrypted).join(ApiKey, ApiKey.id == Integration.key_id))
    return [(row[0], row[1]) for row in rows]
