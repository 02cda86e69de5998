"""What a device (or a network server speaking for it) reports besides uplinks: a join, its answer to a
confirmed downlink, data from a service, a solved location. Checked here; pure functions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker_sdk.messages import EventName, Timestamp, describe_errors

from .uplinks import Limits, check_size, rejected, unwrap

# The field of The Things Stack's message that carries each report, as it appears in the event.
REPORT_FIELDS = {
    "join": "join_accept",
    "down/ack": "downlink_ack",
    "down/nack": "downlink_nack",
    "service/data": "service_data",
    "location/solved": "location_solved",
    "publish": "publish",
}


class JoinAccept(BaseModel):
    """A device joined: The Things Stack's `join_accept` (other fields pass through)."""

    model_config = ConfigDict(extra="allow")

    session_key_id: str | None = None
    received_at: Timestamp | None = None


class DownlinkAnswer(BaseModel):
    """A device's ack or nack: of the downlink named by the id `down/deliver` gave (or its `down:<id>` correlation
    id, as in a whole TTS message), or of the last one sent. The downlink's own fields may come along."""

    model_config = ConfigDict(extra="allow")

    id: str | None = Field(None, min_length=1, max_length=40)


class ServiceData(BaseModel):
    """Data from an application-layer service (`service_data`)."""

    model_config = ConfigDict(extra="allow")

    service: str = Field(min_length=1, max_length=100)
    data: dict[str, Any]


class Location(BaseModel):
    """A position (`location_solved.location`)."""

    model_config = ConfigDict(extra="allow")

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    altitude: float | None = None
    accuracy: float | None = Field(None, ge=0)
    source: str | None = None


class LocationSolved(BaseModel):
    """A location a service solved (`location_solved`)."""

    model_config = ConfigDict(extra="allow")

    service: str = Field(min_length=1, max_length=100)
    location: Location
    attributes: dict[str, str] | None = None


class Publish(BaseModel):
    """A named event a device publishes (Particle's `Particle.publish(name, data)`): a name to select it by, and
    its data as text."""

    model_config = ConfigDict(extra="forbid")

    name: EventName = Field(description="1-64 letters, digits, _, - and /")
    data: str = Field("", max_length=16384)

    @field_validator("data", mode="before")
    @classmethod
    def _data_is_text(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"must be text, as Particle's data is: send {json.dumps(json.dumps(value))}")
        return value

    ttl: int = Field(60, ge=0, le=16777215)
    private: bool = True
    published_at: Timestamp | None = None


MODELS: dict[str, type[BaseModel]] = {
    "join": JoinAccept,
    "down/ack": DownlinkAnswer,
    "down/nack": DownlinkAnswer,
    "service/data": ServiceData,
    "location/solved": LocationSolved,
    "publish": Publish,
}


@dataclass(frozen=True)
class Report:
    """A checked report, with what a whole The Things Stack message carried around it."""

    kind: str
    content: dict[str, Any]
    correlation_ids: list[str]
    envelope: dict[str, Any]
    device_ids: dict[str, Any]


def parse_report(kind: str, body: bytes | dict[str, Any], limits: Limits = Limits()) -> Report:
    """Check one report: its own fields, or a whole The Things Stack message (`{"join_accept": {...}, ...}`);
    an empty body is an empty object (an ack of the last confirmed downlink needs nothing else)."""
    name = f"{kind}/push"
    if isinstance(body, bytes | bytearray) and not body.strip():
        body = {}
    message = unwrap(check_size(body, name, limits), REPORT_FIELDS[kind], name)
    fields = dict(message.fields)
    correlation_ids = fields.pop("correlation_ids", [])
    problems = []
    if not isinstance(correlation_ids, list) or not all(isinstance(item, str) for item in correlation_ids):
        problems.append({"field": "correlation_ids", "message": "must be a list of strings"})
    elif len(correlation_ids) > 16:
        problems.append({"field": "correlation_ids", "message": "at most 16 are allowed"})
    try:
        content = MODELS[kind].model_validate(fields).model_dump(exclude_none=True)
    except ValidationError as err:
        problems += describe_errors(err, message.prefix.rstrip("."))
    if problems:
        raise rejected(name, problems)
    return Report(kind, content, list(correlation_ids), message.envelope, message.device_ids)
