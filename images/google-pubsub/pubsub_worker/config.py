"""Configuration of the Pub/Sub image (`PUBSUB_*` environment variables)."""

from __future__ import annotations

import json

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from worker_sdk import ImageSettings
from worker_sdk.topics import selected_events

DEFAULT_EVENTS = "uplink,downlink.queued,downlink.sent,downlink.failed,device.create,device.update,device.delete"


class PubSubSettings(ImageSettings):
    """Everything the Pub/Sub worker reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="PUBSUB_", extra="ignore")

    project_id: str = Field(pattern=r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", description="Google Cloud project id")
    topic: str = Field(min_length=1, description="Topic for events: an id, or projects/<p>/topics/<t>")
    subscription: str = Field("", description="Subscription to pull downlinks from; empty: no downlinks")
    downlink_topic: str = Field("", description="Topic of that subscription, used to create it if missing")
    dead_letter_topic: str = Field("", description="Where invalid downlink messages go; empty: dropped after an event")
    credentials_json: SecretStr = Field(SecretStr(""), description="Service account key JSON")
    emulator_host: str = Field("", description="host:port of a Pub/Sub emulator")
    create_if_missing: bool = False
    ordering_by_device: bool = Field(False, description="Ordering key = device id")
    events: str = DEFAULT_EVENTS
    batch_max_messages: int = Field(500, ge=1, le=1000)
    batch_max_bytes: int = Field(1_000_000, ge=1000, le=10_000_000)
    batch_max_latency_seconds: float = Field(0.05, ge=0, le=10)
    subscriber_max_messages: int = Field(100, ge=1, le=10_000, description="Downlinks handled at once")

    @field_validator("credentials_json")
    @classmethod
    def _check_credentials(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value().strip()
        if text:
            try:
                data = json.loads(text)
            except ValueError as err:
                raise ValueError("is not JSON (paste the whole service account key file)") from err
            if not isinstance(data, dict) or data.get("type") != "service_account":
                raise ValueError('is not a service account key (its "type" must be "service_account")')
        return value

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: str) -> str:
        selected_events(value)
        return value

    @property
    def event_names(self) -> tuple[str, ...]:
        """The events this integration publishes."""
        return selected_events(self.events)
