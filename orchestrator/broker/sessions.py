"""Worker sessions after a broker restart: subscriptions the broker forgot are made again before anything is published.

Mosquitto 2.0 restores persistent sessions, their queued messages and plain subscriptions from its saved
state, but not shared subscriptions, and every worker subscribes shared. A connected worker subscribes
again by itself when it reconnects; a paused integration's worker does not run, so nothing would reach
its session until it is resumed. Each worker publishes its filters (retained, `.../session/{replica}`)
and its status (retained, `.../status/{replica}`, with the time). After every (re)connect the
orchestrator gives running workers a moment to come back; every replica not connected then (its last
status is not `running`, or is older than the broker's own start, `$SYS/broker/uptime`) gets its
filters subscribed again by the orchestrator, which connects as that replica with the integration's own
key. Only then does the event outbox publish, so nothing goes out to a session missing subscriptions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.mqtt import MqttError

from ..bus import Bus
from ..db import Database
from ..db.models import ApiKey, Integration
from ..errors import BrokerError, OrchestratorError
from ..secretbox import SecretBox
from .accounts import BrokerAccounts
from .managed import ManagedBroker
from .watch import UPTIME_SLACK, BrokerWatch

log = logging.getLogger(__name__)
ReplicaKey = tuple[str, str, int]  # application, integration, replica
RETURN_GRACE_SECONDS = 3.0  # how long running workers get to reconnect and subscribe by themselves


class WorkerSessions:
    """Knows every replica's subscription filters and makes them again where the broker lost them."""

    def __init__(
        self,
        db: Database,
        bus: Bus,
        box: SecretBox,
        broker: ManagedBroker | None,
        watch: BrokerWatch,
        accounts: BrokerAccounts,
    ) -> None:
        self.db = db
        self.bus = bus
        self.box = box
        self.broker = broker
        self.watch = watch
        self.accounts = accounts
        self.restored = 0  # replica sessions whose subscriptions were made again
        self._filters: dict[ReplicaKey, list[str]] = {}  # what each replica subscribes
        self._running_since: dict[ReplicaKey, datetime] = {}  # when a replica last said it runs (connected)
        self._ready_for = 0  # the bus connection after which the sessions are known to be complete
        bus.subscribe(topics.integration_topic("+", "+", "session/+"), self._on_session)
        bus.subscribe(topics.integration_topic("+", "+", "status/+"), self._on_status)

    async def _on_session(self, topic: str, payload: bytes) -> None:
        key = topics.replica_topic(topic, "session")
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
        key = topics.replica_topic(topic, "status")
        if key is None:
            return
        try:
            status = json.loads(payload) if payload else {}
            at = datetime.fromisoformat(str(status["time"]).replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            status, at = {}, None
        if status.get("state") == "running" and at is not None:
            self._running_since[key] = at
        else:
            self._running_since.pop(key, None)  # stopped, offline (its will), or cleared

    def _connected(self, key: ReplicaKey) -> bool:
        """Whether the replica is connected now: it said `running`, and said so since the broker started."""
        since = self._running_since.get(key)
        if since is None:
            return False
        started = self.watch.started_at
        return started is None or since >= started - UPTIME_SLACK

    async def ready(self, connection: int) -> None:
        """Return once the sessions are complete for this bus connection (restoring them if needed)."""
        if self._ready_for >= connection:
            return
        await self._restore(connection)
        self._ready_for = connection

    async def _restore(self, connection: int) -> None:
        # Retained messages come in subscription order, the uptime last: once it is here, so are the
        # sessions and statuses the broker kept (a broker without $SYS topics gets a second, then goes on).
        deadline = time.monotonic() + 1.0
        while self.watch.seen_in < connection and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # The replicas' accounts must exist before we log in as them (a broker that lost them gets them back).
        try:
            await self.accounts.ready(connection)
        except (BrokerError, TimeoutError) as err:
            log.warning("worker sessions restored without synced broker accounts: %s", err)
        records = await self.db.run(_integrations_with_keys)
        enabled = {(r.application_id, r.id) for r, _ in records if r.enabled}
        keys = {(r.application_id, r.id): key for r, key in records}
        deadline = time.monotonic() + RETURN_GRACE_SECONDS
        while time.monotonic() < deadline and any(
            not self._connected(key) for key in self._filters if key[:2] in enabled
        ):
            await asyncio.sleep(0.1)
        missing = [key for key in self._filters if not self._connected(key) and key[:2] in keys]
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
        connection = self.bus.connection_as(
            topics.worker_client_id(app_id, integration_id, replica),
            ".".join(secret.split(".")[:2]),
            secret,
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
