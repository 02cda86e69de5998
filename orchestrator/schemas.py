"""API shapes: `XCreate` (input), `XUpdate` (partial input), `XPublic` (output; never a secret)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from worker_sdk.messages import Base64Str, Eui, EventName, Identifier

from .keys import SCOPES
from .runtime.base import WorkerState

MAX_REPLICAS = 32
MAX_ATTRIBUTES = 64


class Strict(BaseModel):
    """Input models refuse unknown fields, so a typo is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


# -- applications and keys ----------------------------------------------------------------------


class ApplicationCreate(Strict):
    id: Identifier = Field(description="3-36 lowercase letters, digits and single dashes")
    name: str = Field("", max_length=200)
    description: str = Field("", max_length=2000)


class ApplicationUpdate(Strict):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)


class ApplicationPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    description: str
    created_at: datetime


class KeyCreate(Strict):
    name: str = Field("", max_length=200)
    scopes: list[Literal[SCOPES]] = Field(min_length=1)  # type: ignore[valid-type]
    application_login: bool = Field(
        False,
        description="Also log in to MQTT as `{application id}` (and `{application id}@{tenant}`), as clients "
        "written for The Things Stack do; one key per application: a newer one takes the login over",
    )


class KeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    scopes: list[str]
    integration_id: str | None
    application_login: bool = False
    mqtt_usernames: list[str] = Field(
        default_factory=list, description="Usernames this key logs in to MQTT with (the key is the password)"
    )
    created_at: datetime


class KeyCreated(KeyPublic):
    key: str = Field(description="The key itself: shown only in this answer")


# -- devices -----------------------------------------------------------------------------------


class DeviceFields(Strict):
    name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    dev_eui: Eui | None = None
    join_eui: Eui | None = None
    attributes: dict[str, str] | None = None

    @field_validator("attributes")
    @classmethod
    def _check_attributes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_ATTRIBUTES:
            raise ValueError(f"at most {MAX_ATTRIBUTES} attributes")
        for key, item in value.items():
            if not key or len(key) > 64 or len(item) > 4096:
                raise ValueError(f"attribute {key!r}: keys 1-64 characters, values up to 4096")
        return value


class DeviceCreate(DeviceFields):
    device_id: Identifier


class DeviceUpdate(DeviceFields):
    """Only the fields given change; `attributes` replaces all attributes."""


class DevicePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    application_id: str
    device_id: str
    name: str
    description: str
    dev_eui: str | None
    join_eui: str | None
    attributes: dict[str, str]
    created_at: datetime
    updated_at: datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int


# -- integrations ------------------------------------------------------------------------------


class ResourceOverrides(Strict):
    memory_mb: int | None = Field(None, ge=16, le=65536)
    cpus: float | None = Field(None, gt=0, le=64)


def _not_a_route(value: str) -> str:
    if value in RESERVED_INTEGRATION_IDS:
        raise ValueError(f"{value} is reserved (it names the API's own route)")
    return value


RESERVED_INTEGRATION_IDS = {"validate"}  # /integrations/validate is a route
IntegrationId = Annotated[Identifier, AfterValidator(_not_a_route)]


class IntegrationCreate(Strict):
    id: IntegrationId | None = Field(None, description="Generated from the template when empty")
    template_id: str
    name: str = Field("", max_length=200)
    config: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    resources: ResourceOverrides = ResourceOverrides()


class IntegrationUpdate(Strict):
    """Fields given change. `config` merges: given values replace, null resets, omitted secrets stay."""

    name: str | None = Field(None, max_length=200)
    config: dict[str, Any] | None = None
    replicas: int | None = Field(None, ge=1, le=MAX_REPLICAS)
    resources: ResourceOverrides | None = None


class IntegrationStatus(BaseModel):
    desired: WorkerState = Field(description="running or stopped: what the integration is set to")
    actual: WorkerState
    since: datetime
    last_error: str | None
    last_error_at: datetime | None
    restart_count: int
    runtime: str | None
    handle: dict[str, Any] | None


class IntegrationCounters(BaseModel):
    delivered: int
    failed: int
    retried: int
    duplicates: int = Field(description="Copies of messages the workers recognised and dropped (see docs)")
    dead_lettered: int = Field(0, description="Messages parked as dead letters after failing for good")
    last_delivery_at: datetime | None


class IntegrationPublic(BaseModel):
    id: str
    application_id: str
    name: str
    template_id: str
    template_version: str
    config: dict[str, Any] = Field(description="Non-secret values; secrets are never returned")
    secrets_set: list[str] = Field(description="Which secret fields have a value")
    enabled: bool
    replicas: int
    resources: dict[str, Any]
    status: IntegrationStatus
    counters: IntegrationCounters
    created_at: datetime
    updated_at: datetime
    downlink_key_id: str | None = Field(
        None, description="The key the target pushes downlinks with, when the template asks for one"
    )


class IntegrationCreated(IntegrationPublic):
    """The answer to a create: the integration, and its downlink key when its template asks for one."""

    downlink_api_key: str | None = Field(
        None, description="The key the target pushes downlinks with: shown this once (write it down)"
    )
    notes: list[str] = Field(
        default_factory=list, description="What an import did with the definition (a field sealed, a default taken)"
    )


class ValidationResult(BaseModel):
    valid: bool
    errors: list[dict[str, str]] = Field(default_factory=list)


class ActivityPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    message: str
    details: dict[str, Any]
    at: datetime


class IntegrationTest(Strict):
    """A sample uplink, or named event, to send through one integration (the console's TEST button)."""

    device_id: Identifier | None = Field(
        None, description="Default: the first of the integration's devices, else the application's first device"
    )
    f_port: int = Field(1, ge=1, le=223)
    frm_payload: Base64Str = Field("AQID", description="base64")
    decoded_payload: dict[str, Any] = Field(default_factory=lambda: {"temperature": 21.5, "humidity": 48})
    event_name: EventName | None = Field(
        None,
        description="Send a named event (Particle's publish) with this name and decoded_payload as its JSON data; "
        "default: one named by the integration's event prefix when it selects named events and not uplinks",
    )


class TestOutcome(BaseModel):
    outcome: Literal["delivered", "failed", "no answer"]
    message: str
    event: dict[str, Any] | None
    uplink: dict[str, Any]


# -- dead letters ------------------------------------------------------------------------------


class DeadLetterPublic(BaseModel):
    id: int
    at: datetime
    event: str = Field(description="What the message was (uplink, downlink.sent, ...)")
    device_id: str | None
    topic: str = Field(description="Where it came from")
    message: Any = Field(description="The message as the worker received it: JSON, or text (base64 if `encoding` says)")
    encoding: Literal["utf-8", "base64"]
    error: str = Field(description="Why it failed for good")
    details: dict[str, Any] = Field(description="The request sent and the last answer, as the worker reported them")
    attempts: int


class DeadLetterSelection(Strict):
    """Which dead letters: these ids, or all of them."""

    ids: list[int] | None = Field(None, min_length=1, max_length=10_000)
    all: bool = False

    @model_validator(mode="after")
    def _one_way(self) -> DeadLetterSelection:
        if (self.ids is None) == (not self.all):
            raise ValueError("give either ids or all: true")
        return self


class DeadLetterOutcome(BaseModel):
    count: int = Field(description="How many were sent again, or deleted")


class StreamToken(BaseModel):
    """A short-lived token that opens one application's event stream (for a browser's EventSource)."""

    token: str
    expires_at: datetime
    url: str = Field(description="The stream's path with the token in its query")
