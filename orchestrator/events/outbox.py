"""The event outbox: every event is logged durably first, then handed to listeners and published on MQTT.

Why: Mosquitto acknowledges a message as soon as it holds it in memory and saves that memory only now
and then, so a broker killed between two saves forgets messages it had acknowledged. The log does not
forget. The outbox publishes the log's events in order and, once the broker acknowledged everything up
to an id, records that id on the broker itself as a retained *checkpoint*. The checkpoint is saved by
the broker together with the messages it covers, so after any restart (of the broker or of the
orchestrator) the checkpoint the broker still has says exactly where its memory ends: the outbox
publishes everything after it again. Workers drop the copies they already handled (worker SDK).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from typing import Any, Protocol

from worker_sdk.mqtt import MqttError

from ..bus import Bus
from ..db.models import utcnow
from ..errors import DatabaseUnavailable
from .log import EventLog, LoggedEvent, NewEvent

log = logging.getLogger(__name__)
CHECKPOINT_TOPIC = "orchestrator/log-checkpoint"
CHECKPOINT_INTERVAL_SECONDS = 0.2
CHECKPOINT_WAIT_SECONDS = 1.0  # how long a retained checkpoint may take to arrive after a connect
MAX_BATCH = 1000  # events per database write, and per burst of publishes awaiting their acknowledgements
SEND_HEADROOM = 8  # of the broker's Receive Maximum, left for publishes other than events
RETRY_SECONDS = 1.0
STOP_FLUSH_SECONDS = 5.0


class SessionGuard(Protocol):
    """Makes sure every subscriber's session is complete on the broker before events go out after a connect."""

    async def ready(self, connection: int) -> None: ...


def _ignore_outcome(future: asyncio.Future[None]) -> None:
    future.add_done_callback(lambda done: done.cancelled() or done.exception())


def describe(err: BaseException) -> str:
    """A database error in one line, without the SQL statement SQLAlchemy appends."""
    original = getattr(err, "orig", None) or err
    return f"{type(original).__name__}: {str(original).splitlines()[0] if str(original) else ''}".rstrip(": ")


class Outbox:
    """Logs events in batches, announces them on the bus, publishes them in log order, and publishes again."""

    def __init__(
        self,
        log: EventLog,
        bus: Bus,
        sessions: SessionGuard,
        checkpoint_topic: str = CHECKPOINT_TOPIC,
        *,
        announce: bool = True,
    ) -> None:
        self.log = log
        self.bus = bus
        self.sessions = sessions
        self.checkpoint_topic = checkpoint_topic  # one per instance when several share the broker
        # Off with several instances: the log's tail then announces every instance's events, in id order.
        self.announce = announce
        self.failure: str | None = None  # why the log cannot be written, while it cannot
        self.published_through = 0  # every event with a topic up to this id was acknowledged by the broker
        self.republished = 0  # events published again after a broker or orchestrator restart
        self._pending: list[tuple[NewEvent, asyncio.Future[LoggedEvent]]] = []
        self._written = asyncio.Event()
        self._to_publish: deque[LoggedEvent] = deque()
        self._publishable = asyncio.Event()
        self._replayed_connection = 0  # the bus connection whose broker state the log was last replayed onto
        self._broker_checkpoints: dict[int, int | None] = {}  # per bus connection: the first checkpoint seen
        self._checkpoint_sent = -1
        self._writing = False
        self._tasks: list[asyncio.Task[None]] = []
        bus.subscribe(checkpoint_topic, self._on_checkpoint, no_local=True)
        bus.on_connect(self._on_connect)

    @property
    def backlog(self) -> int:
        """Logged events not yet acknowledged by the broker."""
        return len(self._to_publish)

    @property
    def all_published(self) -> bool:
        """Every event this instance logged was acknowledged by the broker."""
        return not self._pending and not self._to_publish and not self._replay_needed

    async def emit(self, event: NewEvent) -> LoggedEvent:
        """Log an event durably (batched with others) and return it with its id; DatabaseUnavailable if it cannot be.

        Listeners get it and MQTT publishing starts as soon as it is written; the caller need not wait.
        """
        future: asyncio.Future[LoggedEvent] = asyncio.get_running_loop().create_future()
        self._pending.append((event, future))
        self._written.set()
        return await future

    def start(self) -> None:
        """Start writing and publishing."""
        self._tasks = [
            asyncio.create_task(self._write_loop()),
            asyncio.create_task(self._publish_loop()),
            asyncio.create_task(self._checkpoint_loop()),
            asyncio.create_task(self._retention_loop()),
        ]

    async def stop(self) -> None:
        """Write what is pending, publish what the broker takes within a few seconds, record the checkpoint."""
        deadline = time.monotonic() + STOP_FLUSH_SECONDS
        while (self._pending or (self._to_publish and self.bus.connected)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.bus.connected and not self._replay_needed:  # else the old value might cover what the broker lost
            with contextlib.suppress(MqttError, TimeoutError):
                async with asyncio.timeout(2):
                    await self._send_checkpoint()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- writing -----------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._written.wait()
            self._written.clear()
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                await self._write(batch)

    async def _write(self, batch: list[tuple[NewEvent, asyncio.Future[LoggedEvent]]]) -> None:
        events = [event for event, _ in batch]
        at = utcnow()
        self._writing = True
        try:
            ids = await self.log.insert(events, at)
        except Exception as err:  # whatever it is, every sender waiting on this batch must hear of it
            self.failure = f"the event log cannot be written: {describe(err)}"
            log.error("%s; %d events refused (their senders are told)", self.failure, len(batch))
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable(self.failure))
            return
        finally:
            self._writing = False
        if self.failure:
            log.info("the event log can be written again")
        self.failure = None
        logged = [
            LoggedEvent(ident, e.application_id, e.name, e.data, at, e.device_id, e.integration_id, e.topic)
            for ident, e in zip(ids, events, strict=True)
        ]
        for (_, future), event in zip(batch, logged, strict=True):
            if not future.done():
                future.set_result(event)
        if self.announce:
            self.bus.announce(logged)
        publishable = [event for event in logged if event.topic]
        if publishable:
            self._to_publish.extend(publishable)
            self._publishable.set()

    # -- publishing --------------------------------------------------------------------------------

    async def _publish_loop(self) -> None:
        while True:
            await self.bus.wait_connected()
            try:
                if self._replay_needed:
                    await self._replay(self.bus.connections)
                elif self._to_publish:
                    # Left in the queue until acknowledged: what is queued says what is not published yet.
                    batch = list(itertools.islice(self._to_publish, MAX_BATCH))
                    await self._publish(batch)
                    while self._to_publish and self._to_publish[0].id <= batch[-1].id:
                        self._to_publish.popleft()
                else:
                    self._publishable.clear()
                    await self._publishable.wait()
            except MqttError as err:
                # What was not acknowledged is published again from the log after the next connect.
                log.warning("event publishing paused: %s", err)
                await asyncio.sleep(0.1)
            except Exception:  # the database, most likely: try again, from the checkpoint
                log.exception("event publishing failed; trying again in %.0f s", RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)

    @property
    def _replay_needed(self) -> bool:
        return self._replayed_connection != self.bus.connections

    async def _publish(self, events: list[LoggedEvent], *, own: bool = True) -> None:
        """Publish in order and wait for the acknowledgements; MqttError if the connection went meanwhile."""
        # Room left for others' publishes on the connection (the checkpoint, downlinks, the TEST button).
        window = max(1, min(MAX_BATCH, self.bus.send_window - SEND_HEADROOM))
        for start in range(0, len(events), window):
            chunk = events[start : start + window]
            await self.bus.publish_in_order([(event.topic or "", event.data) for event in chunk])
            if own:
                self.published_through = max(self.published_through, chunk[-1].id)

    def covered_through(self, newest: int) -> int:
        """Every event this instance logged up to this id was acknowledged by the broker.

        `newest` is the newest id committed to the log: any of ours below it is written, so it is either
        published or still queued here.
        """
        if self._replay_needed or self._writing:  # a batch being written may be committed and not queued yet
            return min(self.published_through, newest)
        if self._to_publish:
            return min(self._to_publish[0].id - 1, newest)
        return max(self.published_through, newest)

    async def publish_for(self, instance_id: str, after_id: int) -> int:
        """Publish the events another instance logged after `after_id` (it died before the broker had them all)."""
        cursor, count = after_id, 0
        while page := await self.log.publishable_after(cursor, MAX_BATCH, instance_id=instance_id):
            await self.bus.wait_connected()
            await self._publish(page, own=False)
            cursor, count = page[-1].id, count + len(page)
        self.republished += count
        return count

    async def _replay(self, connection: int) -> None:
        """Publish again every logged event the broker's checkpoint does not cover."""
        await self.sessions.ready(connection)
        empty = not await self.log.newest_id()
        start = None if empty else await self._broker_checkpoint(connection)
        if start is None:
            start = 0
            if not empty:
                log.warning(
                    "the broker has no event checkpoint (a new broker, or one that lost its saved state): "
                    "publishing again every event the log keeps"
                )
        self.published_through = start
        cursor, count = start, 0
        while page := await self.log.publishable_after(cursor, MAX_BATCH):
            await self._publish(page)
            cursor, count = page[-1].id, count + len(page)
        while self._to_publish and self._to_publish[0].id <= cursor:
            self._to_publish.popleft()  # just published from the log
        self._replayed_connection = connection  # only now: a replay cut short starts again
        log.info("broker checkpoint %s: published %d events again that the broker may have lost", start, count)
        self.republished += count

    async def _retention_loop(self) -> None:
        # Here, not in the log: only the outbox knows which events the broker has not acknowledged yet,
        # and those stay however old they get (a broker that is down for long).
        while True:
            try:
                removed = await self.log.prune(protect_after=self.published_through)
                if removed:
                    log.info("event retention removed %d events", removed)
            except Exception:
                log.exception("event retention failed; will try again")
            await asyncio.sleep(self.log.settings.prune_interval_seconds)

    # -- the checkpoint ----------------------------------------------------------------------------

    async def _on_connect(self) -> None:
        self._publishable.set()  # the loop sees a new connection and replays first

    async def _on_checkpoint(self, topic: str, payload: bytes) -> None:
        try:
            value: int | None = int(json.loads(payload)["log_id"])
        except (ValueError, KeyError, TypeError):
            value = None
        self._broker_checkpoints.setdefault(self.bus.connections, value)

    async def _broker_checkpoint(self, connection: int) -> int | None:
        """The checkpoint the broker kept (a retained message it sends right after our subscription)."""
        deadline = time.monotonic() + CHECKPOINT_WAIT_SECONDS
        while connection not in self._broker_checkpoints and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # Forget older connections' values, not this one's or a newer one's (a replay may start again).
        self._broker_checkpoints = {key: v for key, v in self._broker_checkpoints.items() if key >= connection}
        return self._broker_checkpoints.get(connection)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(CHECKPOINT_INTERVAL_SECONDS)
            if self.bus.connected and not self._replay_needed and self.published_through != self._checkpoint_sent:
                try:
                    _ignore_outcome(self._checkpoint_future())
                except MqttError as err:
                    log.debug("checkpoint not sent: %s", err)

    def _checkpoint_future(self) -> asyncio.Future[None]:
        self._checkpoint_sent = self.published_through
        body: dict[str, Any] = {"log_id": self.published_through, "time": utcnow().isoformat()}
        return self.bus.publish_nowait(self.checkpoint_topic, json.dumps(body), retain=True)

    async def _send_checkpoint(self) -> None:
        await self._checkpoint_future()
