"""The bus: the orchestrator's one MQTT connection, and the in-process fan-out of the events it logs.

Every part that talks MQTT (the handler, the event outbox, the recorder, the reconciler) subscribes and
publishes here; every part that follows events as they are logged (the event stream, the TEST button)
listens here. Nobody else opens a connection or keeps a listener list.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from worker_sdk.mqtt import (
    ConnectedHook,
    MessageHandler,
    MqttConnection,
    MqttError,
    MqttLoginRefused,
    MqttTlsRefused,
)

from .errors import BrokerError
from .events.log import LoggedEvent

log = logging.getLogger(__name__)
LISTENER_QUEUE_SIZE = 10_000
CLIENT_ID = "orchestrator-handler"
LEAVE_SHARED_SECONDS = 0.5
DRAIN_QUIET_SECONDS = 1.0  # a dead instance's session is drained once nothing arrived for this long
DRAIN_MAX_SECONDS = 120.0


def instance_client_id(instance_id: str) -> str:
    """The broker session of one instance among several."""
    return f"orchestrator-{instance_id}"


class Listener:
    """New events of one application (or all), in log order, until the listener falls too far behind."""

    def __init__(self, limit: int = LISTENER_QUEUE_SIZE) -> None:
        self._items: deque[LoggedEvent] = deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self._lagged = False

    def put(self, event: LoggedEvent) -> None:
        """Queue an event; a full queue is emptied and marked lagged (the reader catches up from the log)."""
        if len(self._items) >= self._limit:
            self._items.clear()
            self._lagged = True
        self._items.append(event)
        self._ready.set()

    async def get(self) -> LoggedEvent | None:
        """The next event; None once after events were dropped, so the reader re-reads from the log."""
        while not self._items and not self._lagged:
            self._ready.clear()
            await self._ready.wait()
        if self._lagged:
            self._lagged = False
            return None
        return self._items.popleft()


class Bus:
    """One persistent MQTT session for the whole orchestrator, and listeners of logged events."""

    def __init__(
        self,
        url: str,
        *,
        username: str,
        password: str,
        receive_maximum: int,
        ca_file: str | None = None,
        client_id: str = CLIENT_ID,
        share_group: str | None = None,
    ) -> None:
        self.url = url
        self.ca_file = ca_file
        # Several instances on one database share the broker: each has its own session, and takes its share
        # of the messages that must be handled once (device requests, worker reports).
        self.share_group = share_group
        self._login = (username, password)
        self._receive_maximum = receive_maximum
        # No resend by the client after a reconnect: the event outbox publishes again from the durable log
        # whatever the broker did not acknowledge (a resend would be a second copy).
        self._mqtt = MqttConnection(
            url,
            client_id,
            username=username,
            password=password,
            receive_maximum=receive_maximum,
            resend_after_reconnect=False,
            ca_file=ca_file,
        )
        self._listeners: dict[str | None, set[Listener]] = {}

    # -- MQTT ------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the broker connection is up."""
        return self._mqtt.is_connected

    @property
    def connections(self) -> int:
        """How many times the bus has connected: tells one connection's messages from the next one's."""
        return self._mqtt.connections

    async def wait_connected(self) -> None:
        """Return once the broker connection is up."""
        await self._mqtt.wait_connected()

    def subscribe(
        self, topic_filter: str, handler: MessageHandler, *, no_local: bool = False, once: bool = False
    ) -> None:
        """Handle messages on a filter (QoS 1; acknowledged when the handler returns, not if it raises).

        `once`: with several instances, one of them gets each message (a shared subscription).
        """
        if once and self.share_group:
            topic_filter = f"$share/{self.share_group}/{topic_filter}"
        self._mqtt.subscribe(topic_filter, handler, no_local=no_local)

    def on_connect(self, hook: ConnectedHook) -> None:
        """Run `hook` after every connect, the first included."""
        self._mqtt.on_connect.append(hook)

    async def publish(self, topic: str, payload: bytes | str | dict[str, Any], *, retain: bool = False) -> None:
        """Publish with QoS 1 and wait for the broker's acknowledgement; MqttError if none comes."""
        await self._mqtt.publish(topic, payload, retain=retain)

    @property
    def send_window(self) -> int:
        """How many messages may await the broker's acknowledgement at once (the broker's Receive Maximum)."""
        return self._mqtt.send_window

    def publish_nowait(self, topic: str, payload: bytes | str, *, retain: bool = False) -> asyncio.Future[None]:
        """Publish with QoS 1 now (only while connected); the future resolves with the acknowledgement."""
        if not self.connected:
            raise MqttError(f"not connected to the MQTT broker at {self.url}")
        return self._mqtt.publish_nowait(topic, payload, retain=retain)

    def publish_in_order(self, messages: list[tuple[str, str]]) -> asyncio.Future[None]:
        """Publish several with QoS 1 now; the future resolves once the broker acknowledged them all.

        Only the last one is tracked: a broker acknowledges in the order it received them.
        """
        if not self.connected:
            raise MqttError(f"not connected to the MQTT broker at {self.url}")
        for topic, payload in messages[:-1]:
            self._mqtt.publish_untracked(topic, payload)
        return self._mqtt.publish_nowait(*messages[-1])

    async def start(self) -> None:
        """Connect, retrying until the broker answers; BrokerError if it refuses the admin login."""
        try:
            await self._mqtt.connect_with_retry(refused_is_final=True)
        except MqttTlsRefused as err:
            raise BrokerError(f"ORCH_BROKER__URL, ORCH_BROKER__CA_FILE: {err}") from err
        except MqttLoginRefused as err:
            raise BrokerError(f"ORCH_BROKER__USERNAME, ORCH_BROKER__PASSWORD: {err} (wrong admin login)") from err

    def connection_as(self, client_id: str, username: str, password: str, **options: Any) -> MqttConnection:
        """A separate connection to the same broker under another identity (a worker's, to tend its session)."""
        return MqttConnection(
            self.url, client_id, username=username, password=password, ca_file=self.ca_file, **options
        )

    @property
    def _shared_filters(self) -> list[str]:
        return [topic_filter for topic_filter in self._mqtt.filters if topic_filter.startswith("$share/")]

    async def stop(self) -> None:
        """Disconnect; the persistent session keeps what arrives meanwhile.

        With several instances, this one first leaves the shared subscriptions (the broker would otherwise
        keep handing it its share of the messages, to wait in its session until it comes back), and ends
        its session: another instance took its share, and the rest is only for an instance that runs.
        """
        shared = self._shared_filters
        if shared and self.connected:
            self._mqtt.unsubscribe_now(shared)
            await asyncio.sleep(LEAVE_SHARED_SECONDS)  # what was already on its way is handled and acknowledged
        await self._mqtt.disconnect(end_session=bool(self.share_group))

    async def drain_session(self, client_id: str) -> int:
        """Handle what the broker keeps for the session of an instance that died, then end that session.

        Its share of the messages handled once (device requests, worker reports) waits there, and more keeps
        arriving while the session has its shared subscriptions: taking the session over hands them to our
        handlers. Returns how many messages were handled.
        """
        shared = self._shared_filters
        connection = self.connection_as(client_id, *self._login, receive_maximum=self._receive_maximum, reconnect=False)
        handled = 0
        last = time.monotonic()

        def counted(handlers: list[MessageHandler]) -> MessageHandler:
            async def handle(topic: str, payload: bytes) -> None:
                nonlocal handled, last
                for handler in handlers:
                    await handler(topic, payload)
                handled, last = handled + 1, time.monotonic()

            return handle

        for topic_filter in shared:
            connection.subscribe(topic_filter, counted(self._mqtt.handlers(topic_filter)))
        try:
            await connection.connect(timeout=10)
            started = time.monotonic()
            while connection.is_connected and time.monotonic() - last < DRAIN_QUIET_SECONDS:
                if time.monotonic() - started > DRAIN_MAX_SECONDS:
                    break
                await asyncio.sleep(0.1)
            if connection.is_connected:
                connection.unsubscribe_now(shared)
                await asyncio.sleep(LEAVE_SHARED_SECONDS)
                await connection.disconnect(end_session=True)
            else:
                log.warning("the session %s was taken back by its owner while drained", client_id)
        except (MqttError, TimeoutError, OSError) as err:
            log.warning("could not drain the broker session %s: %s", client_id, err)
            await connection.disconnect()
            raise BrokerError(f"could not take over the broker session {client_id}: {err}") from err
        return handled

    async def forget_sessions(self, client_ids: list[str]) -> None:
        """End the broker sessions of workers that are gone for good, and the messages queued for them.

        A session outlives its worker: left behind, it keeps its subscriptions (a shared one still takes
        its turn of the messages) and the broker queues for it without end. Connecting with its client id
        and a clean start replaces it; no worker may be using the id.
        """

        async def forget(client_id: str) -> None:
            connection = self.connection_as(client_id, *self._login, persistent=False)
            try:
                await connection.connect(timeout=10)
                await connection.disconnect()
            except (MqttError, TimeoutError, OSError) as err:
                log.warning("could not end the broker session %s: %s", client_id, err)

        await asyncio.gather(*(forget(client_id) for client_id in client_ids))

    # -- listeners of logged events ----------------------------------------------------------------

    @contextmanager
    def listening(self, app_id: str | None) -> Iterator[Listener]:
        """A listener of one application's new events (None: every application's) for the `with` block."""
        listener = Listener()
        self._listeners.setdefault(app_id, set()).add(listener)
        try:
            yield listener
        finally:
            self._listeners.get(app_id, set()).discard(listener)

    def announce(self, events: list[LoggedEvent]) -> None:
        """Hand logged events to their application's listeners (call from the event loop, in log order)."""
        for event in events:
            for key in (event.application_id, None):
                for listener in self._listeners.get(key, ()):
                    listener.put(event)
