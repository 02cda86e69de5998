"""Configuration of the webhook image (`WEBHOOK_*` environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from worker_sdk import ImageSettings
from worker_sdk.topics import selected_events

BodyFormat = Literal["message", "json", "form", "raw", "none"]


class WebhookSettings(ImageSettings):
    """Everything the webhook worker reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="WEBHOOK_", extra="ignore")

    url: str = Field(description="Target URL, a Mustache template ({{device_id}} etc.)")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "POST"
    headers: str = Field("{}", description="JSON object of header templates")
    secret_headers: SecretStr = Field(
        SecretStr("{}"), description="JSON object of header templates whose values are secret (API keys, tokens)"
    )
    query: str = Field("{}", description="JSON object of query parameter templates")
    secret_query: SecretStr = Field(
        SecretStr("{}"), description="JSON object of query parameter templates whose values are secret (api_key=...)"
    )
    body_format: BodyFormat = Field("message", description="message: the event JSON as is")
    body: str = Field("", description="Body template: JSON for json/form, text for raw")
    content_type: str = "text/plain; charset=utf-8"
    auth_username: str = ""
    auth_password: SecretStr = SecretStr("")
    auth_token: SecretStr = SecretStr("")
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    response_template: str = Field("", description="Renders the response into a downlink; empty: none")
    response_topic: str = Field(
        "", description="Particle's responseTopic: the answer goes to the device as named downlinks TOPIC/0, TOPIC/1"
    )
    error_response_topic: str = Field(
        "", description="Particle's errorResponseTopic: a failure goes to the device as a named downlink TOPIC/0"
    )
    response_too_long: Literal["split", "refuse"] = Field(
        "split", description="An answer over 512 bytes: split into 512-byte parts, or refused (an error event)"
    )
    particle_defaults: bool = Field(
        False, description="Add Particle's default form fields event, data, published_at, coreid (not noDefaults)"
    )
    downlink_f_port: int = Field(1, ge=1, le=223)
    downlink_confirmed: bool = False
    timeout_seconds: float = Field(10.0, gt=0, le=300)
    tls_verify: bool = True
    ca_file: str = Field("", description="Path of an extra CA (PEM) to trust")
    ca_pem: str = Field("", description="The same as PEM text (a container has no files of the user's)")
    events: str = Field("uplink", description="Comma-separated events to send")
    paths: str = Field(
        "{}", description="JSON object: event name -> path template added to WEBHOOK_URL (one path per message type)"
    )
    field_mask: str = Field(
        "", description="Comma-separated paths of the message to send (`uplink_message.decoded_payload`); empty: all"
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        # The scheme is fixed text: a template cannot turn the request into file:// or anything but HTTP.
        if not value.lower().startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (variables may follow)")
        return value

    @field_validator("events")
    @classmethod
    def _check_events(cls, value: str) -> str:
        selected_events(value)
        return value

    @property
    def event_names(self) -> tuple[str, ...]:
        """The events this webhook sends."""
        return selected_events(self.events)


def split_names(value: str) -> list[str]:
    """Split a comma-separated setting into trimmed, non-empty names."""
    return [name.strip() for name in value.split(",") if name.strip()]
