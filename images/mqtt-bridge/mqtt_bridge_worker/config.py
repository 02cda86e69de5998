"""Configuration of the MQTT bridge image (`MQTT_BRIDGE_*` environment variables), and its topic templates."""

from __future__ import annotations

import re
import ssl

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from worker_sdk import ImageSettings
from worker_sdk.settings import check_mqtt_url
from worker_sdk.topics import EVENT_DEVICE_TOPICS, selected_events

PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
EVENT_PLACES = {"application_id", "device_id", "event", "topic"}  # what an event's topic may name
DOWNLINK_PLACES = {"application_id", "device_id", "operation"}


class BridgeSettings(ImageSettings):
    """Where the user's broker is, how to log in, and which topics to use."""

    model_config = SettingsConfigDict(env_prefix="MQTT_BRIDGE_", extra="ignore")

    url: str = Field(description="The user's broker: mqtt://host:1883 or mqtts://host:8883")
    username: str = ""
    password: SecretStr = SecretStr("")
    ca_pem: str = Field("", description="CA certificate (PEM) to trust for mqtts://; empty: the system's")
    client_id: str = Field("", description="MQTT client id; default iot-bridge-{application}-{integration}")
    topic: str = Field(
        "v3/{application_id}/devices/{device_id}/{topic}",
        description="Topic of each event: {application_id}, {device_id}, {event} (uplink, ...) and {topic} "
        "(The Things Stack's: up, join, down/ack, ...)",
    )
    qos: int = Field(1, ge=0, le=1, description="0 or 1 (QoS 2 is not offered)")
    retain: bool = False
    events: str = Field("uplink", description="Comma-separated events to forward")
    downlink_topic: str = Field(
        "v3/{application_id}/devices/{device_id}/down/{operation}",
        description="Where downlinks come from: {device_id} and {operation} (push or replace) each a whole "
        "level; empty: none",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        return check_mqtt_url(value)

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: str) -> str:
        selected_events(value)
        return value

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        unknown = set(PLACEHOLDER.findall(value)) - EVENT_PLACES
        if unknown:
            raise ValueError(f"unknown placeholders {sorted(unknown)}; use {', '.join(sorted(EVENT_PLACES))}")
        if not value or "+" in value or "#" in value:
            raise ValueError("must be a topic without wildcards (+, #)")
        return value

    @field_validator("downlink_topic")
    @classmethod
    def _check_downlink_topic(cls, value: str) -> str:
        if not value:
            return value
        levels = value.split("/")
        for place in ("device_id", "operation"):
            if levels.count(f"{{{place}}}") != 1:
                raise ValueError(f"needs {{{place}}} as one whole topic level")
        unknown = set(PLACEHOLDER.findall(value)) - DOWNLINK_PLACES
        if unknown or "+" in value or "#" in value:
            raise ValueError(f"only {', '.join(sorted(DOWNLINK_PLACES))} may vary (no wildcards)")
        return value

    @field_validator("ca_pem")
    @classmethod
    def _check_ca(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip():
            return value
        if not str(info.data.get("url", "")).startswith("mqtts://"):
            raise ValueError("a CA is for mqtts:// URLs (TLS)")
        try:
            ssl.create_default_context(cadata=value)
        except (ssl.SSLError, ValueError) as err:
            raise ValueError(f"not a PEM certificate ({err})") from None
        return value

    @property
    def event_names(self) -> tuple[str, ...]:
        """The events forwarded."""
        return selected_events(self.events)


def event_topic(template: str, application_id: str, device_id: str, event: str) -> str:
    """The topic of one event on the user's broker."""
    values = {"application_id": application_id, "device_id": device_id, "event": event}
    values["topic"] = EVENT_DEVICE_TOPICS[event]
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def downlink_filter(template: str, application_id: str) -> str:
    """The subscription that receives downlinks: the device and the operation are any level."""
    return template.replace("{application_id}", application_id).replace("{device_id}", "+").replace("{operation}", "+")


def parse_downlink_topic(template: str, application_id: str, topic: str) -> tuple[str, str] | None:
    """The device id and the operation level a downlink topic names, or None if its shape differs."""
    expected = template.replace("{application_id}", application_id).split("/")
    levels = topic.split("/")
    if len(levels) != len(expected):
        return None
    device_id, operation = levels[expected.index("{device_id}")], levels[expected.index("{operation}")]
    return (device_id, operation) if device_id else None
