"""JSON shapes of device messages (The Things Stack v3 compatible), shared by the handler and workers."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

ID_PATTERN = r"^[a-z0-9](?:-?[a-z0-9]){2,35}$"
EUI_PATTERN = r"^[0-9A-Fa-f]{16}$"
EVENT_NAME_PATTERN = r"[A-Za-z0-9_\-/]{1,64}"
DOWNLINK_NAME_PATTERN = r"^[A-Za-z0-9_\-/.:]{1,255}$"  # ASCII only: \w would let other alphabets in


def _check_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError("must be base64") from err
    return value


Base64Str = Annotated[str, AfterValidator(_check_base64)]


def _check_identifier(value: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise ValueError(
            "must be 3 to 36 lowercase letters, digits and single dashes, not starting or ending with a dash"
        )
    return value


def _check_eui(value: str) -> str:
    if not re.fullmatch(EUI_PATTERN, value):
        raise ValueError("must be 16 hexadecimal digits (an EUI-64)")
    return value


_AWARE_TIME: TypeAdapter[AwareDatetime] = TypeAdapter(AwareDatetime)


def _check_time(value: str) -> str:
    try:
        _AWARE_TIME.validate_python(value)
    except ValidationError as err:
        raise ValueError("must be an RFC 3339 time with a time zone, like 2020-02-12T15:15:45.789Z") from err
    return value  # kept as written (The Things Stack writes nanoseconds)


def _check_downlink_name(value: str) -> str:
    if not re.fullmatch(DOWNLINK_NAME_PATTERN, value):
        raise ValueError("must be 1 to 255 letters, digits, _, -, /, . or : (like hook-response/temp/0)")
    return value


def _check_event_name(value: str) -> str:
    if not re.fullmatch(EVENT_NAME_PATTERN, value):
        raise ValueError("must be 1 to 64 letters, digits, _, - or / (Particle's rule for event names)")
    return value


Identifier = Annotated[str, AfterValidator(_check_identifier)]
EventName = Annotated[str, AfterValidator(_check_event_name)]
Timestamp = Annotated[str, AfterValidator(_check_time)]
Eui = Annotated[str, AfterValidator(_check_eui)]
DownlinkName = Annotated[str, AfterValidator(_check_downlink_name)]
Priority = Literal["LOWEST", "LOW", "BELOW_NORMAL", "NORMAL", "ABOVE_NORMAL", "HIGH", "HIGHEST"]


def now_iso() -> str:
    """The current time as RFC 3339 UTC with microseconds, as The Things Stack writes it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class UplinkSubmission(BaseModel):
    """An uplink as a device, a simulator or a network server sends it (MQTT `up/push` or HTTP POST).

    The fields the handler reads are checked; every other field (The Things Stack's `session_key_id`,
    `consumed_airtime`, `locations`, `version_ids`, ...) passes through unchanged.
    """

    model_config = ConfigDict(extra="allow")

    f_port: int | None = Field(None, ge=0, le=255)
    f_cnt: int | None = Field(None, ge=0)
    frm_payload: Base64Str | None = None
    decoded_payload: dict[str, Any] | None = None
    rx_metadata: list[dict[str, Any]] | None = None
    settings: dict[str, Any] | None = None
    received_at: Timestamp | None = None  # set by a network server; the handler's own time when absent
    correlation_ids: list[str] = Field(default_factory=list, max_length=16)


class Downlink(BaseModel):
    """One downlink as pushed by an integration (`down/push`, `down/replace` or HTTP)."""

    model_config = ConfigDict(extra="forbid")

    f_port: int = Field(ge=1, le=223)
    frm_payload: Base64Str | None = None
    decoded_payload: dict[str, Any] | None = None
    confirmed: bool = False
    priority: Priority = "NORMAL"
    correlation_ids: list[str] = Field(default_factory=list, max_length=16)
    # What the device recognises it by (Particle's `{device}/hook-response/{event}/{index}`); a named downlink is
    # delivered at once instead of waiting for the device's next uplink.
    name: DownlinkName | None = None

    @model_validator(mode="after")
    def _has_payload(self) -> Downlink:
        if self.frm_payload is None and self.decoded_payload is None:
            raise ValueError("a downlink needs frm_payload or decoded_payload")
        return self

    def payload_size(self) -> int:
        """Size in bytes of the binary payload (0 when only decoded_payload is set)."""
        return len(base64.b64decode(self.frm_payload)) if self.frm_payload else 0


class DownlinkRequest(BaseModel):
    """The body of `down/push` and `down/replace`: `{"downlinks": [...]}` (an empty `down/replace` clears the
    queue); The Things Stack's optional `end_device_ids` is read, and must name the device of the topic."""

    model_config = ConfigDict(extra="forbid")

    downlinks: list[Downlink] = Field(max_length=16)
    end_device_ids: dict[str, Any] | None = None


def end_device_ids(
    app_id: str, device_id: str, dev_eui: str | None = None, join_eui: str | None = None
) -> dict[str, Any]:
    """The `end_device_ids` object that every device message carries."""
    ids: dict[str, Any] = {"device_id": device_id, "application_ids": {"application_id": app_id}}
    if dev_eui:
        ids["dev_eui"] = dev_eui.upper()
    if join_eui:
        ids["join_eui"] = join_eui.upper()
    return ids


def describe_errors(err: ValidationError, prefix: str = "") -> list[dict[str, str]]:
    """Turn a pydantic error into `[{"field": "a.b", "message": "..."}]`, one entry per problem."""
    problems = []
    for item in err.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"])
        field = ".".join(part for part in (prefix, path) if part)
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"].removeprefix("Value error, ")
        problems.append({"field": field or "(body)", "message": message})
    return problems


class InvalidDownlink(ValueError):
    """A downlink a platform sent cannot be queued; the text says why."""


def validate_downlinks(items: list[Any]) -> list[dict[str, Any]]:
    """Each item checked as a handler downlink; InvalidDownlink names the first one that is wrong, and why."""
    if not items:
        raise InvalidDownlink("downlinks is empty")
    downlinks = []
    for index, item in enumerate(items):
        try:
            downlinks.append(Downlink.model_validate(item).model_dump(exclude_none=True))
        except ValidationError as err:
            problems = "; ".join(f"{p['field']}: {p['message']}" for p in describe_errors(err))
            where = f"downlinks[{index}]: " if len(items) > 1 else ""
            raise InvalidDownlink(f"{where}{problems}") from err
    return downlinks
