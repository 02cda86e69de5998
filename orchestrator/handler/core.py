"""The handler: the device side every integration talks to, over MQTT and the event stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.messages import DownlinkRequest, describe_errors, end_device_ids, now_iso
from worker_sdk.mqtt import MqttConnection, MqttError

from ..config import Settings
from ..db import Database
from ..errors import NotFoundError, ValidationFailed
from . import downlinks, registry
from .broker import ADMIN_USER
from .hub import EventHub
from .uplinks import UplinkRejected, normalize, parse_submission

log = logging.getLogger(__name__)
T = TypeVar("T")
EXPIRY_INTERVAL_SECONDS = 30.0


class IntegrationListener(Protocol):
    """Receives what workers report; the orchestrator records it on the integration."""

    async def on_integration_event(
        self, app_id: str, integration_id: str, name: str, payload: dict[str, Any]
    ) -> None: ...

    async def on_integration_stats(self, app_id: str, integration_id: str, delta: dict[str, Any]) -> None: ...

    async def on_worker_status(self, app_id: str, integration_id: str, replica: int, state: str) -> None: ...


class Handler:
    """Normalizes uplinks, queues downlinks, emits device events, and relays everything to SSE."""

    def __init__(self, settings: Settings, db: Database, hub: EventHub, broker_password: str) -> None:
        self.settings = settings
        self.db = db
        self.hub = hub
        self.listener: IntegrationListener | None = None
        self.mqtt_password = broker_password
        broker = settings.broker
        external = broker.mode == "external"
        self._broker_login = (
            broker.username if external else ADMIN_USER,
            (broker.password.get_secret_value() if broker.password else None) if external else broker_password,
        )
        self.mqtt = MqttConnection(
            broker.url,
            "orchestrator-handler",
            username=self._broker_login[0],
            password=self._broker_login[1],
            receive_maximum=256,
        )
        self._devices: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: set[tuple[str, str]] = set()
        self._expiry_task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the device cache, subscribe, connect (retrying until the broker answers)."""

        def load(session: Session) -> tuple[list[dict[str, Any]], set[tuple[str, str]]]:
            from ..db.models import Device

            devices = [registry.device_json(device) for device in session.query(Device)]
            return devices, downlinks.devices_with_queue(session)

        devices, self._pending = await self.run_db(load)
        self._devices = {(item["application_id"], item["device_id"]): item for item in devices}
        for suffix in ("up/push", "down/push", "down/replace"):
            self.mqtt.subscribe(f"{topics.PREFIX}/+/devices/+/{suffix}", self._on_device_request)
        self.mqtt.subscribe(f"{topics.PREFIX}/+/integrations/+/#", self._on_integration_message)
        await self.mqtt.connect_with_retry()
        self._expiry_task = asyncio.create_task(self._expiry_loop())

    async def stop(self) -> None:
        """Disconnect; the persistent session keeps what arrives meanwhile."""
        if self._expiry_task:
            self._expiry_task.cancel()
        await self.mqtt.disconnect()

    async def forget_sessions(self, client_ids: list[str]) -> None:
        """End the broker sessions of workers that are gone for good, and the messages queued for them.

        A session outlives its worker: left behind, it keeps its subscriptions (a shared one still takes
        its turn of the messages) and the broker queues for it without end. Connecting with its client id
        and a clean start replaces it; no worker may be using the id.
        """

        async def forget(client_id: str) -> None:
            connection = MqttConnection(
                self.settings.broker.url,
                client_id,
                username=self._broker_login[0],
                password=self._broker_login[1],
                persistent=False,
            )
            try:
                await connection.connect(timeout=10)
                await connection.disconnect()
            except (MqttError, TimeoutError, OSError) as err:
                log.warning("could not end the broker session %s: %s", client_id, err)

        await asyncio.gather(*(forget(client_id) for client_id in client_ids))

    async def run_db(self, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a synchronous database function inside one committed session (see Database.inline)."""

        def call() -> T:
            with self.db.session() as session:
                return function(session, *args, **kwargs)

        if self.db.inline:
            return call()
        return await asyncio.to_thread(call)

    async def emit(self, app_id: str, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        """Publish an event on MQTT (QoS 1, acknowledged) and on the application's event stream."""
        parsed = topics.parse(topic)
        text = json.dumps(payload, separators=(",", ":"))
        if parsed and parsed.event:
            self.hub.publish(app_id, parsed.event, text)
        await self.mqtt.publish(topic, text, retain=retain)

    # -- devices -------------------------------------------------------------------------------

    def device(self, app_id: str, device_id: str) -> dict[str, Any] | None:
        """A registered device from the cache (no database access on the message path)."""
        return self._devices.get((app_id, device_id))

    async def device_changed(self, action: str, device: dict[str, Any]) -> None:
        """Update the cache and emit `device.create|update|delete` on MQTT and SSE."""
        app_id, device_id = device["application_id"], device["device_id"]
        if action == "delete":
            self._devices.pop((app_id, device_id), None)
            self._pending.discard((app_id, device_id))
        else:
            self._devices[(app_id, device_id)] = device
        payload = {
            "end_device_ids": end_device_ids(app_id, device_id, device.get("dev_eui"), device.get("join_eui")),
            "correlation_ids": [],
            "received_at": now_iso(),
            "event": action,
            "device": device,
        }
        await self.emit(app_id, topics.device_topic(app_id, device_id, f"events/{action}"), payload)

    def forget_application(self, app_id: str) -> None:
        """Drop a deleted application's devices from the cache."""
        for key in [key for key in self._devices if key[0] == app_id]:
            self._devices.pop(key, None)
            self._pending.discard(key)

    # -- uplinks -------------------------------------------------------------------------------

    async def accept_uplink(
        self, app_id: str, device_id: str, body: bytes | dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Normalize and publish an uplink; returns it and the downlink sent in reply (class A), if any.

        Raises UplinkRejected or NotFoundError after emitting an `uplink.error` event.
        """
        device = self.device(app_id, device_id)
        try:
            if device is None:
                raise NotFoundError("device", device_id)
            submission = parse_submission(body)
        except (UplinkRejected, NotFoundError) as err:
            await self._uplink_error(app_id, device_id, err, body)
            raise
        uplink = normalize(app_id, device, submission)
        await self.emit(app_id, topics.device_topic(app_id, device_id, "up"), uplink)
        downlink = None
        if (app_id, device_id) in self._pending:
            downlink = await self._send_next_downlink(app_id, device_id, uplink["correlation_ids"])
        return uplink, downlink

    async def _uplink_error(self, app_id: str, device_id: str, err: Exception, body: Any) -> None:
        raw = body.decode("utf-8", "replace") if isinstance(body, bytes | bytearray) else json.dumps(body)
        problems = getattr(err, "problems", [])
        message = err.detail if isinstance(err, NotFoundError) else str(err)
        log.info("rejected uplink from %s/%s: %s", app_id, device_id, message)
        payload = {
            "end_device_ids": end_device_ids(app_id, device_id),
            "correlation_ids": [],
            "received_at": now_iso(),
            "error": {"message": message, "problems": problems},
            "raw": raw[:500],
        }
        await self.emit(app_id, topics.device_topic(app_id, device_id, "events/up/errors"), payload)

    # -- downlinks -----------------------------------------------------------------------------

    def _lifecycle(
        self, app_id: str, device_id: str, kind: str, body: dict[str, Any], error: str | None = None
    ) -> dict[str, Any]:
        device = self.device(app_id, device_id) or {}
        payload: dict[str, Any] = {
            "end_device_ids": end_device_ids(app_id, device_id, device.get("dev_eui"), device.get("join_eui")),
            "correlation_ids": body.get("correlation_ids", []),
            "received_at": now_iso(),
        }
        if kind == "failed":
            payload["downlink_failed"] = {"downlink": body, "error": {"message": error}}
        else:
            payload[f"downlink_{kind}"] = body
        return payload

    async def push_downlinks(
        self, app_id: str, device_id: str, body: bytes | dict[str, Any], replace: bool = False
    ) -> list[dict[str, Any]]:
        """Check and queue downlinks; returns them with ids. Failures emit `downlink.failed` and raise."""
        try:
            request = self._check_downlinks(app_id, device_id, body)
            records = await self.run_db(
                downlinks.enqueue,
                app_id=app_id,
                device_id=device_id,
                downlinks=request,
                replace=replace,
                limit=self.settings.handler.downlink_queue_size,
            )
        except (ValidationFailed, NotFoundError, downlinks.QueueFull) as err:
            message = getattr(err, "detail", None) or str(err)
            failed_body = _as_object(body)
            failed_body = {**failed_body, "correlation_ids": _request_correlation_ids(failed_body)}
            await self.emit(
                app_id,
                topics.device_topic(app_id, device_id, "down/failed"),
                self._lifecycle(app_id, device_id, "failed", failed_body, message),
            )
            if isinstance(err, downlinks.QueueFull):
                raise ValidationFailed([{"field": "downlinks", "message": message}]) from err
            raise
        self._pending.add((app_id, device_id))
        queued = []
        for record in records:
            await self.emit(
                app_id,
                topics.device_topic(app_id, device_id, "down/queued"),
                self._lifecycle(app_id, device_id, "queued", record.body),
            )
            queued.append({"id": record.id, **record.body})
        return queued

    def _check_downlinks(self, app_id: str, device_id: str, body: bytes | dict[str, Any]) -> list[dict[str, Any]]:
        if self.device(app_id, device_id) is None:
            raise NotFoundError("device", device_id)
        if isinstance(body, bytes | bytearray):
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError) as err:
                raise ValidationFailed([{"field": "(body)", "message": f"not valid JSON: {err}"}]) from err
        try:
            request = DownlinkRequest.model_validate(body)
        except ValidationError as err:
            raise ValidationFailed(describe_errors(err)) from err
        limit = self.settings.handler.max_downlink_bytes
        problems = [
            {"field": f"downlinks.{index}.frm_payload", "message": f"{size} bytes; at most {limit} fit"}
            for index, size in enumerate(item.payload_size() for item in request.downlinks)
            if size > limit
        ]
        if problems:
            raise ValidationFailed(problems)
        return [item.model_dump(exclude_none=True) for item in request.downlinks]

    async def _send_next_downlink(self, app_id: str, device_id: str, uplink_ids: list[str]) -> dict[str, Any] | None:
        record, remaining = await self.run_db(downlinks.take_next, app_id=app_id, device_id=device_id)
        if remaining == 0:
            self._pending.discard((app_id, device_id))
        if record is None:
            return None
        delivered = {"id": record.id, **record.body}
        await self.mqtt.publish(topics.device_topic(app_id, device_id, "down/deliver"), delivered)
        body = {**record.body, "correlation_ids": [*record.body.get("correlation_ids", []), *uplink_ids]}
        await self.emit(
            app_id,
            topics.device_topic(app_id, device_id, "down/sent"),
            self._lifecycle(app_id, device_id, "sent", body),
        )
        return delivered

    async def clear_downlinks(self, app_id: str, device_id: str) -> int:
        """Drop the device's queue."""
        count = await self.run_db(downlinks.clear, app_id=app_id, device_id=device_id)
        self._pending.discard((app_id, device_id))
        return count

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)
            try:
                await self.expire_downlinks()
            except Exception:
                log.exception("downlink expiry failed; will try again")

    async def expire_downlinks(self) -> None:
        """Fail downlinks that waited longer than their time to live."""
        expired = await self.run_db(downlinks.expire, ttl_seconds=self.settings.handler.downlink_ttl_seconds)
        for record in expired:
            await self.emit(
                record.application_id,
                topics.device_topic(record.application_id, record.device_id, "down/failed"),
                self._lifecycle(record.application_id, record.device_id, "failed", record.body, record.error),
            )
        if expired:
            self._pending = await self.run_db(lambda session: downlinks.devices_with_queue(session))

    # -- MQTT ingest ---------------------------------------------------------------------------

    async def _on_device_request(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None or parsed.device_id is None:
            return
        try:
            if parsed.suffix == "up/push":
                await self.accept_uplink(parsed.app_id, parsed.device_id, payload)
            else:
                await self.push_downlinks(
                    parsed.app_id, parsed.device_id, payload, replace=parsed.suffix == "down/replace"
                )
        except (UplinkRejected, NotFoundError, ValidationFailed):
            pass  # already reported as an error event on the device
        except Exception:
            log.exception("could not handle %s", topic)

    async def _on_integration_message(self, topic: str, payload: bytes) -> None:
        parsed = topics.parse(topic)
        if parsed is None or parsed.integration_id is None or self.listener is None:
            return
        if not payload:
            return  # a cleared retained status
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            log.warning("ignoring malformed JSON on %s", topic)
            return
        if not isinstance(data, dict):
            return
        app_id, integration_id = parsed.app_id, parsed.integration_id
        try:
            if parsed.event:
                self.hub.publish(app_id, parsed.event, payload.decode())
                await self.listener.on_integration_event(app_id, integration_id, parsed.event, data)
            elif parsed.suffix == "stats":
                await self.listener.on_integration_stats(app_id, integration_id, data)
            elif parsed.suffix.startswith("status/") and parsed.suffix[7:].isdigit():
                await self.listener.on_worker_status(
                    app_id, integration_id, int(parsed.suffix[7:]), str(data.get("state", ""))
                )
        except Exception:
            log.exception("could not record %s", topic)


def _as_object(body: bytes | dict[str, Any]) -> dict[str, Any]:
    """A request body as a JSON object when it is one, else its start as text (for failure events)."""
    if isinstance(body, dict):
        return body
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        parsed = None
    return parsed if isinstance(parsed, dict) else {"raw": body.decode("utf-8", "replace")[:500]}


def _request_correlation_ids(body: dict[str, Any]) -> list[str]:
    """Correlation ids of every downlink in a (possibly invalid) push, so its sender can match a failure."""
    found: list[str] = []
    items = body.get("downlinks")
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and isinstance(item.get("correlation_ids"), list):
            found += [str(value) for value in item["correlation_ids"] if isinstance(value, str)]
    return found
