"""The handler: the device side every integration talks to (uplinks, downlinks, the device cache)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.messages import DownlinkRequest, describe_errors, end_device_ids, now_iso

from ..bus import Bus
from ..config import HandlerSettings
from ..db import Database
from ..db.models import Application, Device, QueuedDownlink
from ..db.session import retry_until_stored
from ..errors import DatabaseUnavailable, NotFoundError, ValidationFailed
from ..events.log import LoggedEvent, NewEvent
from ..events.outbox import Outbox
from ..store import downlinks
from ..store.devices import device_json
from .reports import REPORT_FIELDS, parse_report
from .uplinks import Limits, NotJson, UplinkRejected, load_json, normalize, parse_submission

log = logging.getLogger(__name__)
EXPIRY_INTERVAL_SECONDS = 30.0
DEVICE_REQUESTS = ("up/push", "down/push", "down/replace", *(f"{kind}/push" for kind in topics.DEVICE_REPORTS))
APPLICATIONS_TOPIC = "orchestrator/changed/applications"  # between instances on one database
# Reports that start a message of their own get a new correlation id (acks and nacks carry their downlink's).
OWN_ID_PREFIXES = {"join": "as:up:", "service/data": "as:up:", "location/solved": "as:up:", "publish": "pub:"}


class Handler:
    """Normalizes uplinks, queues downlinks, and keeps the registry in memory for the message path."""

    def __init__(self, settings: HandlerSettings, db: Database, bus: Bus, outbox: Outbox) -> None:
        self.settings = settings
        self.db = db
        self.bus = bus
        self.outbox = outbox
        self._applications: set[str] = set()
        self.limits = Limits(settings.max_message_bytes, settings.max_json_depth)
        self._devices: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: set[tuple[str, str]] = set()  # devices with queued downlinks
        self._expiry_task: asyncio.Task[None] | None = None
        # Three filters cover every request (up/push, down/ack/push, ...): a broker lets only so many
        # subscriptions await their acknowledgement at once (Mosquitto's default: 20).
        for pattern in ("+/push", "+/+/push", "down/replace"):
            bus.subscribe(f"{topics.PREFIX}/+/devices/+/{pattern}", self._on_device_request, once=True)
        # Other instances on the same database change the registry too: their events keep this one in step.
        bus.subscribe(f"{topics.PREFIX}/+/devices/+/events/+", self._on_device_event, no_local=True)
        bus.subscribe(f"{topics.PREFIX}/+/devices/+/down/queued", self._on_downlink_queued, no_local=True)
        bus.subscribe(APPLICATIONS_TOPIC, self._on_application_change, no_local=True)

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registry into memory and start expiring old downlinks."""

        def load(session: Session) -> tuple[list[str], list[dict[str, Any]], set[tuple[str, str]]]:
            applications = list(session.scalars(select(Application.id)))
            devices = [device_json(device) for device in session.scalars(select(Device))]
            return applications, devices, downlinks.devices_with_queue(session)

        applications, devices, self._pending = await self.db.run(load)
        self._applications = set(applications)
        self._devices = {(item["application_id"], item["device_id"]): item for item in devices}
        self._expiry_task = asyncio.create_task(self._expiry_loop())

    async def stop(self) -> None:
        """Stop expiring downlinks."""
        if self._expiry_task:
            self._expiry_task.cancel()

    # -- the registry in memory (the services keep it in step with the database) -------------------

    def device(self, app_id: str, device_id: str) -> dict[str, Any] | None:
        """A registered device (no database access on the message path)."""
        return self._devices.get((app_id, device_id))

    async def require_device(self, app_id: str, device_id: str) -> dict[str, Any]:
        """The device, or NotFoundError naming the application or the device that does not exist.

        A miss is checked in the database: another instance may have made the device a moment ago, before its
        notice arrived here.
        """
        device = self._devices.get((app_id, device_id))
        if device is not None and app_id in self._applications:
            return device
        app_known, found = await self.db.run(_lookup_device, app_id, device_id)
        if not app_known:
            raise NotFoundError("application", app_id)
        self._applications.add(app_id)
        if found is None:
            raise NotFoundError("device", device_id)
        self._devices[(app_id, device_id)] = found
        return found

    def application_added(self, app_id: str) -> None:
        """Know a new application (its devices' messages are accepted from now on); tell the other instances."""
        self._applications.add(app_id)
        self._announce_application(app_id, removed=False)

    def application_removed(self, app_id: str) -> None:
        """Forget a deleted application and its devices; tell the other instances."""
        self._forget_application(app_id)
        self._announce_application(app_id, removed=True)

    def _announce_application(self, app_id: str, *, removed: bool) -> None:
        if self.bus.connected:
            self.bus.publish_nowait(APPLICATIONS_TOPIC, orjson.dumps({"application_id": app_id, "removed": removed}))

    async def _on_application_change(self, topic: str, payload: bytes) -> None:
        try:
            change = orjson.loads(payload)
            app_id, removed = str(change["application_id"]), bool(change["removed"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed application change on %s", topic)
            return
        if removed:
            self._forget_application(app_id)
        else:
            self._applications.add(app_id)

    async def _on_device_event(self, topic: str, payload: bytes) -> None:
        """Another instance created, changed or deleted a device: the cache follows (no event: it made one)."""
        try:
            event = orjson.loads(payload)
            action, device = event["event"], event["device"]
            key = (str(device["application_id"]), str(device["device_id"]))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return  # not a registry change (or not ours to read)
        if action == "delete":
            self._devices.pop(key, None)
            self._pending.discard(key)
        elif action in ("create", "update"):
            self._devices[key] = device

    async def _on_downlink_queued(self, topic: str, payload: bytes) -> None:
        """Another instance queued a downlink: this one looks for it at the device's next uplink."""
        parts = topic.split("/")
        if len(parts) > 3:
            self._pending.add((parts[1], parts[3]))

    def _forget_application(self, app_id: str) -> None:
        self._applications.discard(app_id)
        for key in [key for key in self._devices if key[0] == app_id]:
            self._devices.pop(key, None)
            self._pending.discard(key)

    async def device_changed(self, action: str, device: dict[str, Any]) -> None:
        """Update the cache and emit `device.create|update|delete`."""
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
        await self.emit(app_id, device_id, f"events/{action}", payload)

    async def emit(self, app_id: str, device_id: str, suffix: str, payload: dict[str, Any]) -> LoggedEvent:
        """Log a device event durably; the outbox publishes it on its topic and to the event stream."""
        topic = topics.device_topic(app_id, device_id, suffix)
        name = topics.DEVICE_TOPIC_EVENTS[suffix]
        text = orjson.dumps(payload).decode()  # on every uplink: several times faster than json.dumps
        return await self.outbox.emit(NewEvent(app_id, name, text, device_id=device_id or None, topic=topic))

    # -- uplinks -------------------------------------------------------------------------------

    async def accept_uplink(
        self, app_id: str, device_id: str, body: bytes | dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Normalize and log an uplink; returns it and the downlink sent in reply (class A), if any.

        Raises UplinkRejected or NotFoundError after emitting an `uplink.error` event, and
        DatabaseUnavailable (nothing emitted) when the log cannot be written.
        """
        try:
            device = await self.require_device(app_id, device_id)
            submission = parse_submission(body, self.limits)
        except (UplinkRejected, NotFoundError) as err:
            await self._uplink_error(app_id, device_id, err, body)
            raise
        uplink = normalize(app_id, device, submission)
        await self.emit(app_id, device_id, "up", uplink)
        downlink = None
        if (app_id, device_id) in self._pending:
            try:
                downlink = await self._send_next_downlink(app_id, device_id, uplink["correlation_ids"])
            except DatabaseUnavailable as err:  # the uplink is logged: it must not be taken again
                log.error("no downlink for %s/%s this time (it waits for the next uplink): %s", app_id, device_id, err)
        return uplink, downlink

    # -- what devices report besides uplinks ---------------------------------------------------------

    async def accept_report(
        self, app_id: str, device_id: str, kind: str, body: bytes | dict[str, Any]
    ) -> dict[str, Any]:
        """Check and log a join, a downlink ack or nack, service data or a solved location (`kind`, one of
        topics.DEVICE_REPORTS); returns the event as The Things Stack shapes it. A nacked downlink is queued again.

        Raises UplinkRejected or NotFoundError after emitting an `uplink.error` event naming the report.
        """
        try:
            device = await self.require_device(app_id, device_id)
            report = parse_report(kind, body, self.limits)
            content = report.content
            requeued: list[QueuedDownlink] = []
            if kind in ("down/ack", "down/nack"):
                settled, requeued = await self.db.run(
                    downlinks.settle,
                    app_id=app_id,
                    device_id=device_id,
                    downlink_id=content.get("id") or _downlink_id(report.correlation_ids),
                    outcome="acked" if kind == "down/ack" else "nacked",
                    limit=self.settings.downlink_queue_size,
                )
                content = settled.body
        except (downlinks.NotAwaited, downlinks.QueueFull) as err:
            field = "downlinks" if isinstance(err, downlinks.QueueFull) else "id"  # a nack's re-queue found it full
            error = UplinkRejected(f"invalid {kind}/push: {err}", [{"field": field, "message": str(err)}])
            await self._uplink_error(app_id, device_id, error, body, request=f"{kind}/push")
            raise error from err
        except (UplinkRejected, NotFoundError) as err:
            await self._uplink_error(app_id, device_id, err, body, request=f"{kind}/push")
            raise
        ids = end_device_ids(app_id, device_id, device.get("dev_eui"), device.get("join_eui"))
        received_at = now_iso()
        if kind == "join":
            content = {**content, "received_at": content.get("received_at", received_at)}
        if kind == "publish":
            content = {**content, "published_at": content.get("published_at", received_at)}
        own_ids = [f"{OWN_ID_PREFIXES[kind]}{uuid.uuid4().hex}"] if kind in OWN_ID_PREFIXES else []
        event = {
            **report.envelope,
            "end_device_ids": {**ids, **report.device_ids},
            "correlation_ids": [*own_ids, *report.correlation_ids, *content.get("correlation_ids", [])],
            "received_at": received_at,
            REPORT_FIELDS[kind]: content,
        }
        await self.emit(app_id, device_id, kind, event)
        # A nacked downlink goes out again, as The Things Stack does (a named one at once).
        await self._announce(app_id, device_id, requeued)
        return event

    async def _uplink_error(
        self, app_id: str, device_id: str, err: Exception, body: Any, request: str = "up/push"
    ) -> None:
        message = err.detail if isinstance(err, NotFoundError) else str(err)
        log.info("rejected %s from %s/%s: %s", request, app_id, device_id, message)
        if app_id not in self._applications:
            return  # no application, so no event stream to tell
        payload = {
            "end_device_ids": end_device_ids(app_id, device_id),
            "correlation_ids": [],
            "received_at": now_iso(),
            "error": {"message": message, "problems": getattr(err, "problems", [])},
            "request": request,
            "raw": _excerpt(body),
        }
        await self.emit(app_id, device_id, "events/up/errors", payload)

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
            payload["downlink_failed"] = {"downlink": body, "error": tts_error(error or "failed")}
        else:
            payload[f"downlink_{kind}"] = body
        return payload

    async def push_downlinks(
        self, app_id: str, device_id: str, body: bytes | dict[str, Any], replace: bool = False
    ) -> list[dict[str, Any]]:
        """Check and queue downlinks, delivering named ones at once; returns them with ids, in the order given.
        Failures emit `downlink.failed` and raise."""
        try:
            request = await self._check_downlinks(app_id, device_id, body, replace)
            records = await self.db.run(
                downlinks.push,
                app_id=app_id,
                device_id=device_id,
                downlinks=request,
                replace=replace,
                limit=self.settings.downlink_queue_size,
            )
        except (ValidationFailed, NotFoundError, downlinks.QueueFull) as err:
            message = getattr(err, "detail", None) or str(err)
            failed_body = _as_object(body)
            failed_body = {**failed_body, "correlation_ids": _request_correlation_ids(failed_body)}
            if app_id in self._applications:
                await self.emit(
                    app_id, device_id, "down/failed", self._lifecycle(app_id, device_id, "failed", failed_body, message)
                )
            if isinstance(err, downlinks.QueueFull):
                raise ValidationFailed([{"field": "downlinks", "message": message}]) from err
            raise
        await self._announce(app_id, device_id, records)
        return [{"id": record.id, **record.body} for record in records]

    async def _announce(self, app_id: str, device_id: str, records: list[QueuedDownlink]) -> None:
        """Emit `down/queued` for each new downlink, in order; one recorded as sent (named: not held for an uplink)
        is delivered right after, as class A delivers (`down/deliver`, `down/sent`)."""
        if any(record.state == "queued" for record in records):
            self._pending.add((app_id, device_id))
        undeliverable = False  # after a part that could not go out, the later parts would leave a gap: none go
        for record in records:
            try:
                await self.emit(
                    app_id, device_id, "down/queued", self._lifecycle(app_id, device_id, "queued", record.body)
                )
            except DatabaseUnavailable as err:  # stored all the same; only the event is missing
                log.error("downlink %s stored, but its down/queued event was not logged: %s", record.id, err.detail)
            if record.state != "sent":
                continue
            if undeliverable:
                log.error("named downlink %s not delivered: an earlier one of its request could not be", record.id)
                continue
            try:
                await self._deliver(app_id, device_id, record, uplink_ids=[])
            except DatabaseUnavailable as err:  # as when class A's delivery cannot be logged: it is lost
                undeliverable = True
                log.error("named downlink %s recorded as sent, but not delivered: %s", record.id, err.detail)

    async def _check_downlinks(
        self, app_id: str, device_id: str, body: bytes | dict[str, Any], replace: bool
    ) -> list[dict[str, Any]]:
        await self.require_device(app_id, device_id)
        if isinstance(body, bytes | bytearray):
            try:
                body = load_json(body, self.limits)
            except NotJson as err:
                raise ValidationFailed([{"field": "(body)", "message": str(err)}]) from err
        try:
            request = DownlinkRequest.model_validate(body)
        except ValidationError as err:
            raise ValidationFailed(describe_errors(err)) from err
        if not request.downlinks and not replace:
            raise ValidationFailed(
                [{"field": "downlinks", "message": "empty: push at least one (an empty replace clears)"}]
            )
        named = (request.end_device_ids or {}).get("device_id", device_id)
        if named != device_id:
            message = f"names device {named!r}, but the request is for {device_id!r}"
            raise ValidationFailed([{"field": "end_device_ids.device_id", "message": message}])
        problems = []
        for index, item in enumerate(request.downlinks):
            # A named downlink goes to a connected device (Particle's events), not over LoRaWAN's radio.
            limit = self.settings.max_named_downlink_bytes if item.name else self.settings.max_downlink_bytes
            if (size := item.payload_size()) > limit:
                problems.append(
                    {"field": f"downlinks.{index}.frm_payload", "message": f"{size} bytes; at most {limit} fit"}
                )
        if problems:
            raise ValidationFailed(problems)
        return [item.model_dump(exclude_none=True) for item in request.downlinks]

    async def _send_next_downlink(self, app_id: str, device_id: str, uplink_ids: list[str]) -> dict[str, Any] | None:
        record, remaining = await self.db.run(downlinks.take_next, app_id=app_id, device_id=device_id)
        if remaining == 0:
            self._pending.discard((app_id, device_id))
        if record is None:
            return None
        return await self._deliver(app_id, device_id, record, uplink_ids)

    async def _deliver(
        self, app_id: str, device_id: str, record: QueuedDownlink, uplink_ids: list[str]
    ) -> dict[str, Any]:
        """Emit `down/deliver` and `down/sent` for a downlink recorded as sent; returns what the device gets."""
        delivered = {"id": record.id, **record.body}
        # Logged like any event, so a broker that loses it gets it again (the queue no longer has it).
        await self.emit(app_id, device_id, "down/deliver", delivered)
        body = {**record.body, "correlation_ids": [*record.body.get("correlation_ids", []), *uplink_ids]}
        await self.emit(app_id, device_id, "down/sent", self._lifecycle(app_id, device_id, "sent", body))
        return delivered

    async def queued_downlinks(self, app_id: str, device_id: str) -> list[dict[str, Any]]:
        """The device's queue, in sending order."""
        await self.require_device(app_id, device_id)
        items = await self.db.run(downlinks.queued, app_id, device_id)
        return [{"id": item.id, "queued_at": item.queued_at, **item.body} for item in items]

    async def clear_downlinks(self, app_id: str, device_id: str) -> int:
        """Drop the device's queue."""
        await self.require_device(app_id, device_id)
        count = await self.db.run(downlinks.clear, app_id=app_id, device_id=device_id)
        self._pending.discard((app_id, device_id))
        return count

    async def _expiry_loop(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_INTERVAL_SECONDS)
            try:
                await self.expire_downlinks()
                await self._resync_applications()
            except Exception:
                log.exception("downlink expiry failed; will try again")

    async def _resync_applications(self) -> None:
        """Reload the application ids: a change notice from another instance may have been lost on the way."""
        current = set(await self.db.run(lambda session: list(session.scalars(select(Application.id)))))
        for app_id in self._applications - current:
            self._forget_application(app_id)
        self._applications |= current

    async def expire_downlinks(self) -> None:
        """Fail downlinks that waited longer than their time to live."""
        expired = await self.db.run(downlinks.expire, ttl_seconds=self.settings.downlink_ttl_seconds)
        for record in expired:
            app_id, device_id = record.application_id, record.device_id
            failed = self._lifecycle(app_id, device_id, "failed", record.body, record.error)
            await self.emit(app_id, device_id, "down/failed", failed)
        if expired:
            self._pending = await self.db.run(downlinks.devices_with_queue)

    # -- MQTT ingest ---------------------------------------------------------------------------

    async def _on_device_request(self, topic: str, payload: bytes) -> None:
        """Handle `up/push`, `down/push`, `down/replace` or a report (`join/push`, ...); acknowledged (returns)
        only once logged.

        While the log cannot be written the message is retried here and stays unacknowledged, so the
        broker keeps it instead of it being acknowledged and lost.
        """
        try:
            try:
                await self._handle_device_request(topic, payload)
            except DatabaseUnavailable:
                await retry_until_stored(lambda: self._handle_device_request(topic, payload), what=topic)
        except (UplinkRejected, NotFoundError, ValidationFailed):
            pass  # already reported as an error event on the device
        except Exception:
            log.exception("could not handle %s", topic)

    async def _handle_device_request(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        # v3/{app}/devices/{device}/{request}: a topic level may be empty, and that is an error to report.
        app_id, device_id, suffix = parts[1], parts[3], "/".join(parts[4:])
        if suffix not in DEVICE_REQUESTS:
            log.info("ignored %s: not a request the handler takes", topic)
            return
        if not device_id:
            error = UplinkRejected(f"the topic {topic} names no device")
            if suffix == "up/push":
                await self._uplink_error(app_id, "", error, payload)
            else:
                log.info("ignored %s: %s", topic, error)
            return
        if suffix == "up/push":
            await self.accept_uplink(app_id, device_id, payload)
        elif suffix in ("down/push", "down/replace"):
            await self.push_downlinks(app_id, device_id, payload, replace=suffix == "down/replace")
        else:
            await self.accept_report(app_id, device_id, suffix.removesuffix("/push"), payload)


def _lookup_device(session: Session, app_id: str, device_id: str) -> tuple[bool, dict[str, Any] | None]:
    """Whether the application exists, and the device's JSON if it does."""
    if session.get(Application, app_id) is None:
        return False, None
    device = session.get(Device, (app_id, device_id))
    return True, device_json(device) if device is not None else None


def _excerpt(body: Any) -> str:
    """The start of a request body as text, for error events."""
    if isinstance(body, bytes | bytearray):
        return body[:500].decode("utf-8", "replace")
    try:
        return json.dumps(body)[:500]
    except (TypeError, ValueError, RecursionError):
        return repr(body)[:500]


def _as_object(body: bytes | dict[str, Any]) -> dict[str, Any]:
    """A request body as a JSON object when it is one, else its start as text (for failure events)."""
    if isinstance(body, dict):
        return body
    try:
        parsed = load_json(body, Limits())
    except NotJson:
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


def _downlink_id(correlation_ids: list[str]) -> str | None:
    """The downlink a TTS-shaped answer names through its `down:<id>` correlation id, if any."""
    return next((item.removeprefix("down:") for item in correlation_ids if item.startswith("down:")), None)


def tts_error(message: str) -> dict[str, Any]:
    """An error as The Things Stack writes one in `downlink_failed` (namespace, name, message_format, code),
    with our `message` beside it."""
    name = "downlink_expired" if message.startswith("not sent within") else "downlink_refused"
    return {
        "namespace": "orchestrator/handler",
        "name": name,
        "message_format": message,
        "message": message,
        "correlation_id": uuid.uuid4().hex,
        "code": 4 if name == "downlink_expired" else 3,  # gRPC DEADLINE_EXCEEDED, INVALID_ARGUMENT
    }
