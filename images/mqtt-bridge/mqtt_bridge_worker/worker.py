"""MQTT bridge: the selected events go to the user's own broker, and downlinks published there come back to the
devices; at least once both ways (QoS 1, persistent sessions, acknowledged only once passed on)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, ClassVar

from worker_sdk import ConfigurationError, Event, RetryableError, SetupError, Worker
from worker_sdk.messages import InvalidDownlink, validate_downlinks
from worker_sdk.mqtt import MqttConnection, MqttError

from .config import BridgeSettings, downlink_filter, event_topic, parse_downlink_topic

# The last level of the handler's downlink event topics (down/queued, ...), which a downlink filter may match.
EVENT_LEVELS = {"queued", "sent", "ack", "nack", "failed", "deliver"}


class BridgeWorker(Worker):
    """Publishes each event to the user's broker (waiting for its PUBACK before the event is acknowledged here);
    subscribes to the downlink topic and acknowledges a downlink there only once the handler queued it."""

    settings_class = BridgeSettings
    settings: BridgeSettings
    confirm_downlinks: ClassVar[bool] = True

    def configure(self) -> None:
        """Events from the settings (topics were checked as they were read)."""
        self.events = self.settings.event_names
        if self.settings.downlink_topic and self.settings.downlink_topic == self.settings.topic:
            raise ConfigurationError(["MQTT_BRIDGE_DOWNLINK_TOPIC: must differ from MQTT_BRIDGE_TOPIC"])

    async def setup(self) -> None:
        """Connect to the user's broker (a persistent session per replica) and subscribe to downlinks."""
        settings = self.settings
        client_id = settings.client_id or f"iot-bridge-{self.app_id}-{self.integration_id}"
        self.remote = MqttConnection(
            settings.url,
            client_id,
            username=settings.username or None,
            password=settings.password.get_secret_value() or None,
            ca_data=settings.ca_pem or None,
        )
        if settings.downlink_topic:
            # no_local: what the bridge publishes itself (down/sent, ...) may match the filter; it is not a request.
            self.remote.subscribe(
                downlink_filter(settings.downlink_topic, self.app_id), self._on_downlink, no_local=True
            )
        try:
            await self.remote.connect()
        except MqttError as err:
            raise SetupError(str(err)) from err

    async def teardown(self) -> None:
        """Leave the user's broker (the session stays, so nothing published meanwhile is lost)."""
        remote = getattr(self, "remote", None)
        if remote is not None:
            await remote.disconnect()

    async def handle(self, event: Event) -> dict[str, Any] | None:
        """Publish one event as it is, on its topic."""
        topic = event_topic(self.settings.topic, event.application_id, event.device_id, event.name)
        payload = event.raw or json.dumps(event.payload, separators=(",", ":")).encode()
        try:
            await self.remote.publish(topic, payload, qos=self.settings.qos, retain=self.settings.retain, timeout=10)
        except MqttError as err:
            raise RetryableError(f"the MQTT broker did not take the message: {err}") from err
        return {"request": {"topic": topic, "qos": self.settings.qos, "bytes": len(payload)}}

    async def _on_downlink(self, topic: str, payload: bytes) -> None:
        """One downlink message from the user's broker: queued with the handler before it is acknowledged there;
        one the handler refuses, or that is not a downlink, is reported as an error (the device got nothing)."""
        found = parse_downlink_topic(self.settings.downlink_topic, self.app_id, topic)
        if found is not None and found[1] in EVENT_LEVELS:
            return  # an event on the same topics (down/sent, ...), such as a retained copy: not a request
        if found is None or found[1] not in ("push", "replace"):
            await self.report("error", f"downlink on {topic}: the topic names no device and push or replace")
            return
        device_id, operation = found
        try:
            body = json.loads(payload)
            items = body.get("downlinks") if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise InvalidDownlink('expected {"downlinks": [...]}')
            downlinks = validate_downlinks(items) if items or operation == "push" else []
        except (ValueError, InvalidDownlink) as err:
            await self.report("error", f"downlink on {topic} refused: {err}", device_id=device_id)
            return
        replace = operation == "replace"
        if not downlinks:  # an empty replace clears the queue: nothing is queued, so no verdict comes
            await self.push_downlinks(device_id, [], replace=True)
            return
        delay = 1.0
        while True:  # until the handler took it: only then is it acknowledged on the user's broker
            try:
                refused = await self.push_downlinks_confirmed(device_id, downlinks, replace=replace)
            except RetryableError as err:
                self.log.warning("%s; trying again in %.0f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if refused:
                await self.report(
                    "error", f"downlink on {topic} refused by the handler: {refused}", device_id=device_id
                )
            return
