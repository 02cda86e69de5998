"""The MQTT topic layout shared by the handler and every worker (The Things Stack v3 style)."""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "v3"

# Topic suffixes under v3/{app}/devices/{dev}/ and the event names they appear as on the event stream.
DEVICE_TOPIC_EVENTS: dict[str, str] = {
    "up": "uplink",
    "up/push": "uplink.push",
    "events/up/errors": "uplink.error",
    "down/push": "downlink.push",
    "down/replace": "downlink.replace",
    "down/queued": "downlink.queued",
    "down/sent": "downlink.sent",
    "down/failed": "downlink.failed",
    "down/deliver": "downlink.deliver",
    "down/ack": "downlink.ack",
    "down/ack/push": "downlink.ack.push",
    "down/nack": "downlink.nack",
    "down/nack/push": "downlink.nack.push",
    "join": "join.accept",
    "join/push": "join.push",
    "service/data": "service.data",
    "service/data/push": "service.data.push",
    "location/solved": "location.solved",
    "location/solved/push": "location.solved.push",
    "publish": "publish",
    "publish/push": "publish.push",
    "events/create": "device.create",
    "events/update": "device.update",
    "events/delete": "device.delete",
}
EVENT_DEVICE_TOPICS: dict[str, str] = {event: suffix for suffix, event in DEVICE_TOPIC_EVENTS.items()}

# What a device (or a network server speaking for it) reports, each on `{suffix}/push`, and the event it becomes.
DEVICE_REPORTS = ("join", "down/ack", "down/nack", "service/data", "location/solved", "publish")

# Events an integration can subscribe to (the rest are requests to the handler, not events).
SUBSCRIBABLE_EVENTS = (
    "uplink",
    "uplink.error",
    "join.accept",
    "downlink.queued",
    "downlink.sent",
    "downlink.ack",
    "downlink.nack",
    "downlink.failed",
    "service.data",
    "location.solved",
    "publish",
    "device.create",
    "device.update",
    "device.delete",
)


def selected_events(value: str) -> tuple[str, ...]:
    """The events a comma-separated setting names; ValueError names those no integration can select."""
    names = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in names if name not in SUBSCRIBABLE_EVENTS]
    if unknown or not names:
        raise ValueError(f"unknown events {unknown}; choose from {', '.join(SUBSCRIBABLE_EVENTS)}")
    return names


def device_topic(app_id: str, device_id: str, suffix: str) -> str:
    """Topic of one device message, for example `v3/app/devices/dev/up`."""
    return f"{PREFIX}/{app_id}/devices/{device_id}/{suffix}"


def event_topic(app_id: str, event: str, device_id: str = "+") -> str:
    """Topic (or filter, with the default `+` device) that carries one device event name."""
    return device_topic(app_id, device_id, EVENT_DEVICE_TOPICS[event])


DEAD_LETTERS = "dead-letters"  # under an integration: messages that failed for good, from its workers
REPLAY = "replay"  # under an integration: dead letters sent again, to its workers


def integration_topic(app_id: str, integration_id: str, suffix: str) -> str:
    """Topic under one integration, for example `v3/app/integrations/int/events/error`."""
    return f"{PREFIX}/{app_id}/integrations/{integration_id}/{suffix}"


def worker_client_id(app_id: str, integration_id: str, replica: int) -> str:
    """The MQTT client id (and so the broker session) of one replica of an integration."""
    return f"integration-{app_id}-{integration_id}-{replica}"


def shared(group: str, topic_filter: str) -> str:
    """A shared subscription, so that replicas of one integration split the messages."""
    return f"$share/{group}/{topic_filter}"


@dataclass(frozen=True)
class ParsedTopic:
    """What a topic under the v3 prefix addresses: a device or an integration, and which channel."""

    app_id: str
    suffix: str
    device_id: str | None = None
    integration_id: str | None = None

    @property
    def event(self) -> str | None:
        """The event-stream name of this topic, or None for channels that are not events."""
        if self.device_id is not None:
            return DEVICE_TOPIC_EVENTS.get(self.suffix)
        name = self.suffix.removeprefix("events/")
        if name != self.suffix and name and "/" not in name:
            return "integration." + name
        return None


def replica_topic(topic: str, kind: str) -> tuple[str, str, int] | None:
    """Application, integration and replica of `v3/{app}/integrations/{id}/{kind}/{replica}`, else None."""
    parsed = parse(topic)
    if parsed is None or parsed.integration_id is None or not parsed.suffix.startswith(f"{kind}/"):
        return None
    replica = parsed.suffix.removeprefix(f"{kind}/")
    return (parsed.app_id, parsed.integration_id, int(replica)) if replica.isdigit() else None


def parse(topic: str) -> ParsedTopic | None:
    """Parse a topic under the v3 prefix; None if it is not one of ours."""
    parts = topic.split("/")
    if len(parts) < 5 or parts[0] != PREFIX or not all(parts[1:4]):
        return None
    app_id, kind, ident, suffix = parts[1], parts[2], parts[3], "/".join(parts[4:])
    if kind == "devices":
        return ParsedTopic(app_id, suffix, device_id=ident)
    if kind == "integrations":
        return ParsedTopic(app_id, suffix, integration_id=ident)
    return None
