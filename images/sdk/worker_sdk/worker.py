"""The Worker base class: connection to the handler, at-least-once delivery, device sync, health and stats."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)

from . import topics
from .dedupe import RecentMessages, fingerprint
from .errors import PermanentError, RetryableError, SetupError
from .messages import now_iso
from .mqtt import MqttConnection, MqttError
from .redact import Redactor
from .registry import Device, DeviceRegistry
from .settings import HandlerSettings, ImageSettings, WorkerSettings

log = logging.getLogger(__name__)

DELIVERY_EVENT_MIN_INTERVAL = 0.2  # at most five delivery events a second: history, not a firehose
RETRY_EVENT_MIN_INTERVAL = 5.0
HEALTH_INTERVAL = 5.0
COUNTER_NAMES = ("delivered", "failed", "retried", "duplicates")
# Upper bounds (seconds) of the delivery latency histogram: from the handler receiving a message to its target
# accepting it. The orchestrator exports it as iot_integration_delivery_latency_seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class Interrupted(Exception):
    """The worker is shutting down while a message waits to be retried; leave it unacknowledged."""


@dataclass
class Event:
    """One message a worker receives: an uplink, a downlink lifecycle event or a device event."""

    name: str
    topic: str
    application_id: str
    device_id: str
    payload: dict[str, Any]
    device: Device | None = None
    raw: bytes = b""  # the message exactly as received, to forward without re-encoding

    @property
    def correlation_ids(self) -> list[str]:
        """Correlation ids the handler gave this message."""
        return list(self.payload.get("correlation_ids") or [])

    @property
    def received_at(self) -> str:
        """When the handler received the message (RFC 3339)."""
        return str(self.payload.get("received_at") or "")

    @property
    def event_name(self) -> str:
        """The name Particle's filters and variables see: a named event's own name (`temperature`), else the
        event's (`uplink`)."""
        publish = self.payload.get("publish") if self.name == "publish" else None
        return str(publish.get("name", "")) if isinstance(publish, dict) else self.name


@dataclass
class Counters:
    """Delivery counters, sent to the handler as deltas."""

    delivered: int = 0
    failed: int = 0
    retried: int = 0
    duplicates: int = 0  # copies recognised and dropped (acknowledged without handling them again)
    last_delivery_at: str | None = None
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTER_NAMES, 0))
    # Delivery latency: deliveries per bucket (the last is +Inf) and the sum of their seconds, in total and sent.
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    latency_sent: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum_sent: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        """Count one delivery's latency."""
        self.latency[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def pending(self) -> dict[str, Any]:
        """What changed since the last report."""
        delta: dict[str, Any] = {name: getattr(self, name) - self.sent[name] for name in COUNTER_NAMES}
        delta = {name: value for name, value in delta.items() if value}
        buckets = [now - before for now, before in zip(self.latency, self.latency_sent, strict=True)]
        if any(buckets):
            delta["latency"] = {"buckets": buckets, "sum": round(self.latency_sum - self.latency_sum_sent, 6)}
        if delta and self.last_delivery_at:
            delta["last_delivery_at"] = self.last_delivery_at
        return delta

    def mark_sent(self, delta: dict[str, Any]) -> None:
        """Record that a delta reached the handler."""
        for name in COUNTER_NAMES:
            self.sent[name] += delta.get(name, 0)
        latency = delta.get("latency")
        if latency:
            self.latency_sent = [sent + more for sent, more in zip(self.latency_sent, latency["buckets"], strict=True)]
            self.latency_sum_sent += latency["sum"]


COUNT_BATCH_SECONDS = 0.02  # how long finished messages gather before one report of their counts


class Worker:
    """Base class of an integration worker: subclasses implement `handle` (and optionally more)."""

    settings_class: ClassVar[type[ImageSettings] | None] = None
    default_events: ClassVar[tuple[str, ...]] = ("uplink",)
    # Images that must know whether the handler accepted a downlink (to acknowledge their source).
    confirm_downlinks: ClassVar[bool] = False
    confirm_timeout_seconds: ClassVar[float] = 15.0

    def __init__(self, settings: Any, handler: HandlerSettings, worker: WorkerSettings) -> None:
        self.settings = settings
        self.handler = handler
        self.worker = worker
        self._devices = frozenset(name.strip() for name in worker.devices.split(",") if name.strip())
        self.app_id = handler.application_id
        self.integration_id = worker.integration_id
        self.events: tuple[str, ...] = self.default_events
        self.log = logging.getLogger(type(self).__module__)
        self.counters = Counters()
        self.registry = DeviceRegistry(handler.api_url, self.app_id, handler.api_key.get_secret_value())
        self.http: aiohttp.ClientSession | None = None
        self.mqtt = MqttConnection(
            handler.mqtt_url,
            topics.worker_client_id(self.app_id, self.integration_id, worker.replica),
            username=handler.broker_username,
            password=handler.broker_password,
            # Messages wait for their counts to reach the handler before they are acknowledged (below), so
            # more may be unacknowledged than are being handled.
            receive_maximum=max(worker.concurrency * 8, 256),
            will=(self._status_topic(), json.dumps({"state": "offline"}).encode(), True),
            ca_file=handler.ca_file,
        )
        self.redactor = Redactor.from_environment()
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()  # set after setup(): messages that arrive earlier wait
        self._slots = asyncio.Semaphore(worker.concurrency)
        self._draining = False
        self._inflight: set[asyncio.Task[Any]] = set()
        self._downlink_waiters: dict[str, asyncio.Future[str | None]] = {}
        self._handled = RecentMessages(worker.dedupe_window)
        self._handling: dict[int, asyncio.Future[bool]] = {}  # fingerprint -> done (True once handled)
        self._last_delivery_event = 0.0
        self._last_retry_event = 0.0
        self._counted: list[asyncio.Future[None]] = []  # messages waiting for their counts to be reported
        self._count_wanted = asyncio.Event()
        self._stats_lock = asyncio.Lock()

    # -- what subclasses implement ------------------------------------------------------------

    def configure(self) -> None:
        """Check and compile the configuration; raise ConfigurationError naming each problem."""

    async def setup(self) -> None:
        """Prepare clients for the target platform (called once, after the handler connection)."""

    def wants(self, event: Event) -> bool:
        """False for an event to leave alone (acknowledged, not handled, not counted): the filters the
        subscription cannot express, Particle's event-name prefix (`WORKER_EVENT_PREFIX`) and devices
        (`WORKER_DEVICES`). An image may narrow it further."""
        if self._devices and event.device_id not in self._devices:
            return False
        return event.event_name.startswith(self.worker.event_prefix)

    async def handle(self, event: Event) -> dict[str, Any] | None:
        """Deliver one event; return details for the delivery history, raise Retryable/PermanentError."""
        raise NotImplementedError

    async def failed(self, event: Event, reason: str, details: dict[str, Any]) -> None:
        """An event failed for good (refused, or retried too long), just before it becomes a dead letter: to
        tell the device, as Particle's error response topic does."""

    async def on_device_event(self, name: str, device: Device) -> None:
        """React to a registry change (`device.create|update|delete`): sync it to the platform (replica 0 only)."""

    async def teardown(self) -> None:
        """Release platform clients (called once, on shutdown)."""

    # -- services for subclasses ----------------------------------------------------------------

    async def push_downlinks(self, device_id: str, downlinks: list[dict[str, Any]], replace: bool = False) -> None:
        """Send downlinks to a device through the handler (`down/push` or `down/replace`)."""
        suffix = "down/replace" if replace else "down/push"
        await self.mqtt.publish(topics.device_topic(self.app_id, device_id, suffix), {"downlinks": downlinks})

    async def push_downlinks_confirmed(
        self, device_id: str, downlinks: list[dict[str, Any]], replace: bool = False
    ) -> str | None:
        """Push downlinks and wait for the handler's verdict: None when queued, else why it refused them.

        Raises RetryableError when no verdict comes in time (the caller should retry later).
        """
        marker = f"{self.integration_id}:{uuid.uuid4().hex}"
        downlinks = [{**item, "correlation_ids": [*item.get("correlation_ids", []), marker]} for item in downlinks]
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._downlink_waiters[marker] = waiter
        try:
            await self.push_downlinks(device_id, downlinks, replace)
            async with asyncio.timeout(self.confirm_timeout_seconds):
                return await waiter
        except (TimeoutError, MqttError) as err:
            raise RetryableError(f"the handler did not confirm the downlink for {device_id}: {err!r}") from err
        finally:
            self._downlink_waiters.pop(marker, None)

    async def _on_downlink_outcome(self, topic: str, payload: bytes) -> None:
        try:
            data = json.loads(payload)
        except ValueError:
            return
        failed = data.get("downlink_failed")
        verdict = str((failed.get("error") or {}).get("message", "refused")) if failed else None
        for marker in data.get("correlation_ids") or []:
            waiter = self._downlink_waiters.get(marker)
            if waiter is not None and not waiter.done():
                waiter.set_result(verdict)

    async def report(self, event: str, message: str, **details: Any) -> None:
        """Publish an integration event (`error`, `delivery`, ...) that the orchestrator records."""
        body = {
            "application_id": self.app_id,
            "integration_id": self.integration_id,
            "replica": self.worker.replica,
            "event": event,
            "time": now_iso(),
            "message": message,
            "details": details,
        }
        body = self.redactor.data(body)
        topic = topics.integration_topic(self.app_id, self.integration_id, f"events/{event}")
        try:
            await self.mqtt.publish(topic, body, qos=0 if event == "delivery" else 1, timeout=10)
        except (MqttError, TimeoutError) as err:
            log.warning("could not report %s event: %s", event, err)

    def stop(self) -> None:
        """Ask the worker to shut down gracefully."""
        self._stop.set()

    # -- machinery ------------------------------------------------------------------------------

    def _session_topic(self) -> str:
        return topics.integration_topic(self.app_id, self.integration_id, f"session/{self.worker.replica}")

    def _status_topic(self) -> str:
        return topics.integration_topic(self.app_id, self.integration_id, f"status/{self.worker.replica}")

    def _subscribe(self) -> None:
        group = f"{self.app_id}.{self.integration_id}"
        for name in self.events:
            if name.startswith("device."):
                continue  # device events arrive on the registry subscription below
            # Shared even with one replica: the filter, kept in the persistent session, stays the same when
            # the replica count changes (a plain and a shared one side by side would deliver twice).
            self.mqtt.subscribe(topics.shared(group, topics.event_topic(self.app_id, name)), self._on_message)
        # Every replica needs every registry change, so this one is never shared.
        self.mqtt.subscribe(topics.device_topic(self.app_id, "+", "events/+"), self._on_device_message)
        # The console's TEST button: a sample uplink for this integration only.
        self.mqtt.subscribe(topics.integration_topic(self.app_id, self.integration_id, "test"), self._on_test)
        # Dead letters sent again (the API's replay): handled once, by one replica.
        replay = topics.integration_topic(self.app_id, self.integration_id, topics.REPLAY)
        self.mqtt.subscribe(topics.shared(group, replay), self._on_replay)
        if self.confirm_downlinks:
            for suffix in ("down/queued", "down/failed"):
                self.mqtt.subscribe(topics.device_topic(self.app_id, "+", suffix), self._on_downlink_outcome)

    async def run(self) -> None:
        """Run until stopped: connect, sync devices, deliver messages, then drain and disconnect."""
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        background: list[asyncio.Task[Any]] = []
        try:
            self._subscribe()
            await self.mqtt.connect_with_retry(self._stop)
            await self._load_registry()
            if not await self._setup_with_retry():
                return
            self._ready.set()
            await self.mqtt.publish(self._status_topic(), self._status("running"), retain=True)
            # Mosquitto does not restore shared subscriptions after a restart: the orchestrator makes them
            # again for replicas that are not connected (a paused integration), from this list.
            await self.mqtt.publish(self._session_topic(), {"filters": self.mqtt.filters}, retain=True)
            self.mqtt.on_reconnect.append(self._announce_running)
            self.log.info("integration %s running (replica %d)", self.integration_id, self.worker.replica)
            background = [
                asyncio.create_task(self._stats_loop()),
                asyncio.create_task(self._health_loop()),
                asyncio.create_task(self._report_counts()),
            ]
            await self._stop.wait()
        except MqttError as err:
            log.error("%s", err)
        finally:
            await self._shutdown(background)

    async def _setup_with_retry(self) -> bool:
        """Run setup until it works; a SetupError is reported and retried, so nothing crash-loops silently."""
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self.setup()
                return True
            except SetupError as err:
                log.warning("setup failed: %s; retrying in %.0f s", err, delay)
                await self.report("error", f"setup failed: {err}")
            try:
                await self._interruptible_sleep(delay)
            except Interrupted:
                break
            delay = min(delay * 2, 60.0)
        return False

    async def _shutdown(self, background: list[asyncio.Task[Any]]) -> None:
        self._draining = True
        if self._inflight:
            log.info("waiting for %d messages in flight", len(self._inflight))
            _, pending = await asyncio.wait(self._inflight, timeout=self.worker.shutdown_grace_seconds)
            for task in pending:
                task.cancel()  # left unacknowledged: the broker redelivers them after a restart
        for task in background:
            task.cancel()
        if self.mqtt.is_connected:
            if await self._flush_counted():  # finished messages are acknowledged before the connection goes
                await asyncio.sleep(0.05)
            await self.mqtt.publish(self._status_topic(), self._status("stopped"), retain=True, timeout=5)
            await self.mqtt.disconnect()
        await self.teardown()
        if self.http is not None:
            await self.http.close()
        self.log.info("integration %s stopped", self.integration_id)

    async def _announce_running(self) -> None:
        # The broker published our will ("offline") when the connection dropped: say we are back.
        if not self._draining:
            await self.mqtt.publish(self._status_topic(), self._status("running"), retain=True)

    def _status(self, state: str) -> dict[str, Any]:
        return {"state": state, "replica": self.worker.replica, "pid": os.getpid(), "time": now_iso()}

    async def _load_registry(self) -> None:
        assert self.http is not None
        delay = 1.0
        while not self._stop.is_set():
            try:
                await self.registry.load(self.http)
                return
            except (aiohttp.ClientError, RuntimeError, TimeoutError, KeyError) as err:
                message = f"cannot load the device registry from {self.handler.api_url}: {err}"
                log.warning("%s", message)
                await self.report("error", message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30)

    async def _on_device_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        name = parsed.event if parsed else None
        if name not in ("device.create", "device.update", "device.delete"):
            return
        await self._ready.wait()  # applied after the registry snapshot, so no change is lost
        try:
            data = json.loads(payload)
            device = self.registry.apply(name, data["device"])
        except (ValueError, KeyError, TypeError) as err:
            log.warning("ignoring malformed device event on %s: %s", topic, err)
            return
        if self.worker.replica != 0:
            return  # every replica keeps the registry; one syncs and forwards the change, or each would
        try:
            await self.on_device_event(name, device)
        except Exception as err:
            log.exception("device sync failed for %s", device.device_id)
            await self.report("error", f"device sync failed for {device.device_id}: {err}", device_id=device.device_id)
        if name in self.events:
            await self._on_message(topic, payload)

    async def _on_test(self, topic: str, payload: bytes) -> None:
        try:
            message = json.loads(payload)
            device_id = str(message["end_device_ids"]["device_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed test message")
            return
        kind = "publish" if "publish" in message else "up"  # a sample named event, else a sample uplink
        await self._on_message(topics.device_topic(self.app_id, device_id, kind), payload)

    async def _on_replay(self, topic: str, payload: bytes) -> None:
        """A dead letter sent again: handled as when it first came (copies are not looked for: it was handled
        before, and failed)."""
        try:
            letter = json.loads(payload)
            original = str(letter["topic"])
            raw = (
                base64.b64decode(letter["payload"])
                if letter.get("encoding") == "base64"
                else letter["payload"].encode()
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
            log.warning("ignoring a malformed replay")
            return
        if not original.startswith(f"{topics.PREFIX}/{self.app_id}/"):
            log.warning("ignoring a replay of another application's message: %s", original)
            return
        await self._ready.wait()
        await self._handle_once(original, raw)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        await self._ready.wait()
        key = fingerprint(topic, payload)
        first = self._handling.get(key)
        if key in self._handled or (first is not None and await asyncio.shield(first)):
            self.counters.duplicates += 1  # a copy of a message handled already: acknowledge, do nothing
            await self._count()
            return
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._handling[key] = done
        try:
            await self._handle_once(topic, payload)
            self._handled.add(key)
            done.set_result(True)
        finally:
            self._handling.pop(key, None)
            if not done.done():
                done.set_result(False)  # not handled (shutting down): a copy must not count as handled

    async def _handle_once(self, topic: str, payload: bytes) -> None:
        if self._draining:
            await asyncio.Future()  # never acknowledged: redelivered when the worker comes back
        task = asyncio.current_task()
        assert task is not None
        # The broker should respect our receive maximum, but not every one does: bound the work here too.
        async with self._slots:
            if self._draining:
                await asyncio.Future()
            self._inflight.add(task)
            try:
                await self._process(topic, payload)
            finally:
                self._inflight.discard(task)
        await self._count()

    async def _count(self) -> None:
        """Return once the counters, with this message's outcome, reached the broker on their way to the handler.

        A message is acknowledged only then: a worker that dies before leaves it unacknowledged (sent again, and
        counted then), so the counters count exactly what was acknowledged, never a delivery whose report died
        with the worker. Messages finishing together share one report (see `_report_counts`).
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._counted.append(waiter)
        self._count_wanted.set()
        await waiter

    async def _process(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        try:
            data = json.loads(payload)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            self.counters.failed += 1
            reason = f"malformed message on {topic}: {err}"
            await self.report("error", reason, topic=topic)
            await self._dead_letter(topic, payload, "unknown", "", reason, {}, attempts=1)
            return
        device_id = parsed.device_id if parsed and parsed.device_id else ""
        event = Event(
            name=(parsed.event if parsed else None) or "unknown",
            topic=topic,
            application_id=self.app_id,
            device_id=device_id,
            payload=data,
            device=self.registry.get(device_id),
            raw=payload,
        )
        if self.wants(event):
            await self._deliver(event)

    async def _deliver(self, event: Event) -> None:
        ids: dict[str, Any] = {"device_id": event.device_id, "correlation_ids": event.correlation_ids}
        max_duration = self.worker.retry_max_duration_seconds
        try:
            # Most messages go through at once: no retry machinery on that path.
            details = await self.handle(event)
        except RetryableError:
            self.counters.retried += 1  # the retry loop below starts with an immediate second attempt
        except Exception as err:
            await self._failed(event, ids, err)
            return
        else:
            await self._delivered(event.name, ids, details, event.received_at)
            return
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            wait=self._retry_wait,
            stop=stop_after_delay(max_duration) if max_duration else stop_never,
            sleep=self._interruptible_sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        try:
            details = await retrying(self.handle, event)
        except Interrupted:
            raise asyncio.CancelledError from None
        except RetryableError as err:
            self.counters.failed += 1
            reason = f"gave up after retrying for {max_duration:.0f} s: {err.message}"
            await self.report("error", reason, **ids, **err.details)
            await self._tell_failed(event, reason, err.details)
            attempts = retrying.statistics.get("attempt_number", 1) + 1
            await self._dead_letter(event.topic, event.raw, event.name, event.device_id, reason, err.details, attempts)
            return
        except Exception as err:
            await self._failed(event, ids, err, attempts=retrying.statistics.get("attempt_number", 1) + 1)
            return
        await self._delivered(event.name, ids, details, event.received_at)

    async def _failed(self, event: Event, ids: dict[str, Any], err: Exception, attempts: int = 1) -> None:
        """Count a message that will not be delivered, say why in an error event, and park it as a dead letter."""
        self.counters.failed += 1
        details: dict[str, Any] = {}
        if isinstance(err, PermanentError):
            reason, details = err.message, err.details
        else:
            log.error("unexpected error handling %s", event.topic, exc_info=err)
            reason = f"unexpected error: {err!r}"
        await self.report("error", reason, **ids, **details)
        await self._tell_failed(event, reason, details)
        await self._dead_letter(event.topic, event.raw, event.name, event.device_id, reason, details, attempts)

    async def _tell_failed(self, event: Event, reason: str, details: dict[str, Any]) -> None:
        """Run the image's failed() hook; its own failure is reported, and never stops the dead letter."""
        try:
            await self.failed(event, self.redactor.text(reason), self.redactor.data(details))
        except Exception as err:  # the message must still be parked
            log.error("the failed() hook raised for %s", event.topic, exc_info=err)
            await self.report("error", f"could not tell the device of a failure: {err!r}", device_id=event.device_id)

    async def _dead_letter(
        self, topic: str, raw: bytes, name: str, device_id: str, reason: str, details: dict[str, Any], attempts: int
    ) -> None:
        """Hand a message that failed for good to the orchestrator, in full, to be seen and sent again.

        Returns once the broker has it: until then the message itself stays unacknowledged (kept by the broker).
        """
        try:
            payload, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, encoding = base64.b64encode(raw).decode(), "base64"
        letter = {
            "topic": topic,
            "payload": payload,  # the device's message as received: never altered
            "encoding": encoding,
            "event": name,
            "device_id": device_id,
            "replica": self.worker.replica,
            "time": now_iso(),
            "attempts": attempts,
            **self.redactor.data({"error": reason, "details": details}),
        }
        destination = topics.integration_topic(self.app_id, self.integration_id, topics.DEAD_LETTERS)
        delay = 1.0
        while True:
            try:
                await self.mqtt.publish(destination, letter, qos=1, timeout=10)
                return
            except (MqttError, TimeoutError) as err:
                if self._draining:
                    await asyncio.Future()  # never acknowledged: the broker sends the message again later
                log.warning("could not hand over a dead letter (%s); trying again in %.0f s", err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _delivered(
        self, name: str, ids: dict[str, Any], details: dict[str, Any] | None, received_at: str = ""
    ) -> None:
        self.counters.delivered += 1
        received = _seconds_since(received_at)
        if received is not None:
            self.counters.observe_latency(received)
        self.counters.last_delivery_at = now_iso()
        now = time.monotonic()
        is_test = any(str(item).startswith("test:") for item in ids.get("correlation_ids", []))
        if is_test or now - self._last_delivery_event >= DELIVERY_EVENT_MIN_INTERVAL:
            self._last_delivery_event = now
            await self.report("delivery", f"{name} delivered", **ids, **(details or {}))

    def _retry_wait(self, state: RetryCallState) -> float:
        base = wait_exponential_jitter(
            initial=self.worker.retry_initial_seconds,
            max=self.worker.retry_max_delay_seconds,
            jitter=self.worker.retry_initial_seconds,
        )(state)
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None) or 0.0
        return max(base, min(retry_after, self.worker.retry_max_delay_seconds))

    async def _interruptible_sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        except TimeoutError:
            return
        raise Interrupted()

    async def _before_retry(self, state: RetryCallState) -> None:
        self.counters.retried += 1
        error = state.outcome.exception() if state.outcome else None
        now = time.monotonic()
        if isinstance(error, RetryableError) and now - self._last_retry_event >= RETRY_EVENT_MIN_INTERVAL:
            self._last_retry_event = now
            wait = state.next_action.sleep if state.next_action else 0
            await self.report(
                "retry", f"{error.message}; retrying in {wait:.1f} s", attempt=state.attempt_number, **error.details
            )

    async def _send_stats(self) -> bool:
        """Send what the counters gained since the last report; False if the broker did not take it."""
        async with self._stats_lock:  # one delta at a time: two in flight would both count the same gain
            delta = self.counters.pending()
            if not delta:
                return True
            topic = topics.integration_topic(self.app_id, self.integration_id, "stats")
            try:
                await self.mqtt.publish(topic, delta, timeout=10)
            except (MqttError, TimeoutError) as err:
                log.debug("stats not sent yet: %s", err)
                return False
            self.counters.mark_sent(delta)
            return True

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.worker.stats_interval_seconds)
            await self._send_stats()

    async def _report_counts(self) -> None:
        """Report the counters for the messages waiting on them, a batch at a time, then let those messages go
        (acknowledged). A report that does not reach the broker keeps them waiting, and is tried again."""
        while True:
            await self._count_wanted.wait()
            await asyncio.sleep(COUNT_BATCH_SECONDS)  # the messages finishing meanwhile go in the same report
            self._count_wanted.clear()
            delay = 0.5
            while not await self._flush_counted():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _flush_counted(self) -> bool:
        """Send what the counters gained and release the messages it covers; False if the broker did not take it."""
        waiting, self._counted = self._counted, []
        if await self._send_stats():
            for waiter in waiting:
                if not waiter.done():
                    waiter.set_result(None)
            return True
        self._counted[:0] = waiting  # still waiting: the next report covers them
        return False

    async def _health_loop(self) -> None:
        health_file = Path(self.worker.health_file)
        while True:
            if self.mqtt.is_connected:
                try:
                    health_file.write_text(datetime.now(UTC).isoformat())
                except OSError as err:
                    log.debug("cannot write health file: %s", err)
            await asyncio.sleep(HEALTH_INTERVAL)


def _seconds_since(moment: str) -> float | None:
    """Seconds from an RFC 3339 time (the handler's `received_at`) to now; None if there is none."""
    if not moment:
        return None
    try:
        then = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(0.0, (datetime.now(UTC) - then).total_seconds())
