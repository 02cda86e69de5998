"""An asyncio MQTT 5 connection with a persistent session, QoS 1, and acknowledgement after handling.

Built on gmqtt (no paho-mqtt 2 needed): with `optimistic_acknowledgement=False` gmqtt sends the
PUBACK of a QoS 1 message only when its async handler returns, so a message is acknowledged after it
was delivered, and a worker that dies before that gets it again on reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from gmqtt import Client, Message
from gmqtt.mqtt.constants import MQTTv50, PubAckReasonCode
from gmqtt.mqtt.handler import MQTTConnectError
from gmqtt.storage import PersistentStorage

log = logging.getLogger(__name__)
logging.getLogger("gmqtt").setLevel(logging.WARNING)
# After a lost connection gmqtt warns once per message it can no longer write; our own log says it once.
logging.getLogger("gmqtt.mqtt.protocol").setLevel(logging.ERROR)

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ConnectedHook = Callable[[], Awaitable[None]]
SESSION_NEVER_EXPIRES = 0xFFFFFFFF
MATCH_CACHE_SIZE = 10_000


class MqttError(Exception):
    """The broker could not be reached, refused us, or did not acknowledge in time."""


class MqttLoginRefused(MqttError):
    """The broker refused the username and password (CONNACK 4 or 5; 134 or 135 in MQTT 5)."""


class MqttTlsRefused(MqttLoginRefused):
    """The TLS handshake failed (an untrusted or mismatched certificate)."""


LOGIN_REFUSED_CODES = {4, 5, 134, 135}


class _AckTrackingStorage(PersistentStorage):
    """gmqtt's in-flight store, extended so a publisher can wait for the PUBACK of its message."""

    def __init__(self) -> None:
        super().__init__()
        self.last_mid: int | None = None
        self.waiters: dict[int, asyncio.Future[None]] = {}

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.last_mid = mid

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        waiter = self.waiters.pop(mid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def forget(self, waiter: asyncio.Future[None]) -> None:
        """Stop tracking a waiter nobody awaits any more."""
        for mid, item in list(self.waiters.items()):
            if item is waiter:
                del self.waiters[mid]

    def abandon(self, error: Exception) -> None:
        """Forget every unacknowledged message (nothing is resent) and fail whoever waits for one."""
        self.clear()
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            if not waiter.done():
                waiter.set_exception(error)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when `topic` matches an MQTT filter with `+` and `#` (shared-subscription prefix ignored)."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2]
    filter_parts, topic_parts = topic_filter.split("/"), topic.split("/")
    for index, part in enumerate(filter_parts):
        if part == "#":
            return True
        if index >= len(topic_parts) or (part != "+" and part != topic_parts[index]):
            return False
    return len(filter_parts) == len(topic_parts)


class MqttConnection:
    """One broker connection: subscribe with async handlers, publish and wait for the broker's PUBACK."""

    def __init__(
        self,
        url: str,
        client_id: str,
        *,
        username: str | None = None,
        password: str | None = None,
        persistent: bool = True,
        receive_maximum: int = 64,
        will: tuple[str, bytes, bool] | None = None,
        ca_file: str | None = None,
        ca_data: str | None = None,
        keepalive: int = 30,
        resend_after_reconnect: bool = True,
        acknowledge: bool = True,
        reconnect: bool = True,
    ) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.client_id = client_id
        self.keepalive = keepalive
        # One subscription per distinct filter, numbered: MQTT 5 subscription identifiers tell which
        # subscription a message came through, so overlapping filters reach the right handlers.
        self._filters: list[str] = []
        self._no_local: set[str] = set()
        self._match_cache: dict[tuple[str, str], bool] = {}
        self._handlers: dict[str, list[MessageHandler]] = {}
        self.on_reconnect: list[ConnectedHook] = []  # run after every connect but the first
        self.on_connect: list[ConnectedHook] = []  # run after every connect, the first included
        # Off for a publisher that keeps its own durable record and publishes again after a reconnect:
        # unacknowledged messages then fail with MqttError instead of being resent by the client.
        self.resend_after_reconnect = resend_after_reconnect
        # Off for a connection that borrows someone else's session: what the broker hands it stays
        # unacknowledged, so the broker keeps it for the session's owner.
        self.acknowledge = acknowledge
        # Off for a connection that takes over a session for a while: if its owner comes back and takes it
        # again, the two must not take it from each other in turns.
        self.reconnect = reconnect
        self._connections = 0
        self._closing = False
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Future[None] | None = None
        self._storage = _AckTrackingStorage()
        self._connected = asyncio.Event()
        self._ssl_context: ssl.SSLContext | bool = False
        if self.tls:
            self._ssl_context = ssl.create_default_context(cafile=ca_file, cadata=ca_data or None)
        will_message = Message(will[0], will[1], qos=1, retain=will[2]) if will else None
        self._client = Client(
            client_id,
            clean_session=not persistent,
            optimistic_acknowledgement=False,
            persistent_storage=self._storage,
            will_message=will_message,
            session_expiry_interval=SESSION_NEVER_EXPIRES if persistent else 0,
            receive_maximum=receive_maximum,
        )
        self._client.reconnect_delay = 1
        if username:
            self._client.set_auth_credentials(username, password)
        self._client.on_message = self._on_message
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect

    @property
    def is_connected(self) -> bool:
        """True while the broker connection is up."""
        return self._connected.is_set()

    @property
    def filters(self) -> list[str]:
        """The subscribed filters, in subscription-identifier order (1, 2, ...)."""
        return list(self._filters)

    @property
    def send_window(self) -> int:
        """How many QoS 1 messages may await the broker's acknowledgement at once (its Receive Maximum)."""
        values = self._client._package_handler._connack_properties.get("receive_maximum")  # gmqtt keeps it here
        return int(values[0]) if values else 65535

    @property
    def connections(self) -> int:
        """How many times this client has connected (1 after the first connect)."""
        return self._connections

    async def wait_connected(self) -> None:
        """Return once the broker connection is up."""
        await self._connected.wait()

    def subscribe(self, topic_filter: str, handler: MessageHandler, *, no_local: bool = False) -> None:
        """Register a handler; the subscription is (re)made on every connect, with QoS 1.

        `no_local`: leave out what this connection publishes itself (retained messages still arrive).
        """
        if topic_filter not in self._handlers:
            self._filters.append(topic_filter)
            self._handlers[topic_filter] = []
            if no_local:
                self._no_local.add(topic_filter)
            if self.is_connected:
                self._subscribe(topic_filter)
        self._handlers[topic_filter].append(handler)

    def handlers(self, topic_filter: str) -> list[MessageHandler]:
        """The handlers registered for a filter."""
        return list(self._handlers.get(topic_filter, []))

    def unsubscribe_now(self, topic_filters: list[str]) -> None:
        """Unsubscribe for the rest of this connection (before a disconnect; a reconnect subscribes again)."""
        self._client.unsubscribe(topic_filters)

    def _subscribe(self, topic_filter: str) -> None:
        identifier = self._filters.index(topic_filter) + 1
        self._client.subscribe(
            topic_filter,
            qos=1,
            subscription_identifier=identifier,
            no_local=topic_filter in self._no_local,
        )

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect once; raises MqttError naming the broker when it is unreachable or refuses us."""
        try:
            await asyncio.wait_for(
                self._client.connect(
                    self.host, self.port, ssl=self._ssl_context, keepalive=self.keepalive, version=MQTTv50
                ),
                timeout,
            )
        except ssl.SSLError as err:  # a certificate that does not verify: waiting will not change it
            raise MqttTlsRefused(f"TLS with the MQTT broker at {self.host}:{self.port} failed: {err}") from err
        except (OSError, TimeoutError) as err:
            raise MqttError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {err}") from err
        except MQTTConnectError as err:
            kind = MqttLoginRefused if getattr(err, "_code", None) in LOGIN_REFUSED_CODES else MqttError
            raise kind(f"the MQTT broker at {self.host}:{self.port} refused us: {err}") from err
        except Exception as err:  # gmqtt raises its own connect errors (bad credentials, refused)
            raise MqttError(f"the MQTT broker at {self.host}:{self.port} refused us: {err}") from err
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def connect_with_retry(
        self, stop: asyncio.Event | None = None, max_delay: float = 30.0, *, refused_is_final: bool = False
    ) -> None:
        """Connect, retrying with back-off until it works (or `stop` is set; or the login is refused, if final)."""
        delay = 0.5
        while True:
            try:
                await self.connect()
                return
            except MqttLoginRefused:
                if refused_is_final:
                    raise
                log.warning("the MQTT broker refused our login; retrying in %.0f s", delay)
            except MqttError as err:
                log.warning("%s; retrying in %.0f s", err, delay)
            if stop is not None and stop.is_set():
                raise MqttError("stopped before the broker answered")
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)

    async def disconnect(self, *, end_session: bool = False) -> None:
        """Close the connection cleanly (the session, if persistent, stays on the broker unless `end_session`)."""
        self._closing = True
        properties = {"session_expiry_interval": 0} if end_session else {}
        try:
            await asyncio.wait_for(self._client.disconnect(**properties), 5)
        except Exception as err:  # already gone: nothing left to close
            log.debug("disconnect: %s", err)
        self._connected.clear()

    async def publish(
        self,
        topic: str,
        payload: bytes | str | dict[str, Any],
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Publish; with QoS 1, return only once the broker acknowledged the message."""
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError as err:
            raise MqttError(f"not connected to the MQTT broker {self.host}:{self.port} for {timeout:.0f} s") from err
        waiter = self.publish_nowait(topic, payload, qos=qos, retain=retain)
        try:
            # gmqtt re-sends unacknowledged messages after a reconnect, so waiting stays safe.
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError as err:
            self._storage.forget(waiter)
            raise MqttError(f"the broker did not acknowledge a message on {topic} within {timeout:.0f} s") from err

    def publish_nowait(
        self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, retain: bool = False
    ) -> asyncio.Future[None]:
        """Send now (the caller checks `is_connected`); the future resolves with the broker's PUBACK."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        mid = self.publish_untracked(topic, payload, qos=qos, retain=retain)
        if mid is None:
            waiter.set_result(None)
        else:
            self._storage.waiters[mid] = waiter
        return waiter

    def publish_untracked(
        self, topic: str, payload: bytes | str | dict[str, Any], *, qos: int = 1, retain: bool = False
    ) -> int | None:
        """Send now without a future; returns the packet id (None for QoS 0).

        A broker acknowledges QoS 1 messages in the order it received them (MQTT 3.1.1 §4.6, 5.0 §4.6), so
        a publisher of many can wait for the last one's acknowledgement only.
        """
        if isinstance(payload, dict):
            payload = json.dumps(payload, separators=(",", ":"))
        try:
            self._client.publish(topic, payload, qos=qos, retain=retain)
        except OverflowError as err:  # gmqtt: every packet id the broker's Receive Maximum allows is in use
            raise MqttError(f"too many messages await the broker's acknowledgement on {topic}: {err}") from err
        mid = self._storage.last_mid if qos else None
        self._storage.last_mid = None
        return mid

    def _on_connect(self, client: Client, flags: int, rc: int, properties: dict[str, Any]) -> None:
        log.info("connected to MQTT broker %s:%s as %s", self.host, self.port, self.client_id)
        for topic_filter in self._filters:
            try:
                self._subscribe(topic_filter)
            except OverflowError as err:  # no packet id free: say so, and stay usable
                log.error("could not subscribe to %s: %s", topic_filter, err)
        self._connected.set()
        self._connections += 1
        hooks = [*self.on_connect, *(self.on_reconnect if self._connections > 1 else [])]
        for hook in hooks:
            task = asyncio.ensure_future(hook())
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)

    def _on_disconnect(self, client: Client, packet: Any, exc: Exception | None = None) -> None:
        if not self.reconnect:
            self._closing = True
            client._is_active = False  # gmqtt: no reconnect after this disconnect
        if self._connected.is_set() and not self._closing:
            log.warning("lost the MQTT broker connection; reconnecting")
            if self._watchdog is None or self._watchdog.done():
                self._watchdog = asyncio.ensure_future(self._reconnect_after_refusals())
        self._connected.clear()
        if not self.resend_after_reconnect:
            # Nothing is resent, so the packet ids of what was unacknowledged are free again.
            ids = self._client._package_handler.id_generator  # gmqtt frees them only on acknowledgement
            for mid, _ in self._storage.get_all():
                ids.free_id(mid)
            self._storage.abandon(MqttError(f"lost the connection to the MQTT broker {self.host}:{self.port}"))

    async def _reconnect_after_refusals(self) -> None:
        """Keep reconnecting while the broker refuses our login: gmqtt gives up after a refusal it deems final,
        but here it is often passing (a broker that lost its accounts until the orchestrator makes them again)."""
        delay = 1.0
        while not self._closing and not self._connected.is_set():
            await asyncio.sleep(delay)
            if self._closing or self._connected.is_set():
                return
            handler = self._client._package_handler
            if not getattr(handler, "_permanent_failure", False):  # gmqtt is still trying by itself
                continue
            try:
                await self.connect()
            except MqttError as err:
                log.warning("%s; retrying in %.0f s", err, delay)
                delay = min(delay * 2, 30.0)

    def _matches(self, topic_filter: str, topic: str) -> bool:
        """topic_matches, remembered: checked for every message, and most come from a few topics."""
        key = (topic_filter, topic)
        found = self._match_cache.get(key)
        if found is None:
            if len(self._match_cache) >= MATCH_CACHE_SIZE:
                self._match_cache.clear()
            found = self._match_cache[key] = topic_matches(topic_filter, topic)
        return found

    async def _on_message(
        self, client: Client, topic: str, payload: bytes, qos: int, properties: dict[str, Any]
    ) -> int:
        if not self.acknowledge:
            while self._connected.is_set():
                await asyncio.sleep(0.05)  # answered only once the connection is gone, so never received
            return int(PubAckReasonCode.SUCCESS)
        identifiers = properties.get("subscription_identifier") or []
        # An identifier names the subscription a message came through, so overlapping filters reach the right
        # handlers. Only trusted when its filter matches: Mosquitto 2.0 restores sessions from its saved state
        # with identifiers mixed up, until the client subscribes again.
        filters = [
            self._filters[i - 1]
            for i in identifiers
            if 0 < i <= len(self._filters) and self._matches(self._filters[i - 1], topic)
        ]
        if not filters:  # no (usable) identifier: every matching filter
            filters = [f for f in self._filters if self._matches(f, topic)]
        for topic_filter in filters:
            for handler in self._handlers[topic_filter]:
                await handler(topic, payload)
        if not filters:
            log.debug("no handler for %s", topic)
        return int(PubAckReasonCode.SUCCESS)
