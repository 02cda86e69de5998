"""Normalize what a device sends into The Things Stack v3 uplink JSON (pure functions)."""

from __future__ import annotations

import difflib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from worker_sdk.messages import UplinkSubmission, describe_errors, end_device_ids, now_iso


@dataclass(frozen=True)
class Limits:
    """What a device's message may be: its size in bytes and how deeply its JSON nests (parsers recurse)."""

    max_bytes: int = 131_072
    max_depth: int = 32


class UplinkRejected(ValueError):
    """The device sent something that is not a valid uplink; `problems` names each mistake."""

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def too_deep(value: Any, limit: int) -> bool:
    """True when objects and arrays nest more than `limit` levels (stops looking as soon as it knows)."""
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if limit <= 0:
        return True
    return any(isinstance(child, dict | list) and too_deep(child, limit - 1) for child in children)


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in a parsed JSON value (a scalar is 0)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


LONG_NUMBER = re.compile(rb"\d{19,}")  # the only way to write an integer past 64 bits


class NotJson(ValueError):
    """A body that is not JSON the orchestrator can keep exactly."""


def _checked_int(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise NotJson(f"the integer {text[:40]} is outside the 64-bit range")
    return value


def load_json(body: bytes, limits: Limits) -> Any:
    """Parse a request body within the limits; NotJson says why it cannot be (integers past 64 bits included:
    orjson would turn them into floats without a word, and nothing downstream could keep them exactly)."""
    if len(body) > limits.max_bytes:
        raise NotJson(f"{len(body)} bytes; at most {limits.max_bytes} are allowed (ORCH_HANDLER__MAX_MESSAGE_BYTES)")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        if str(err).startswith("depth limit"):  # orjson stops at 1,024 levels
            raise NotJson(f"nested more than {limits.max_depth} levels deep (ORCH_HANDLER__MAX_JSON_DEPTH)") from err
        raise NotJson(f"not valid JSON: {err}") from err
    if LONG_NUMBER.search(body):  # rare: look again, exactly
        try:
            json.loads(body, parse_int=_checked_int)
        except NotJson as err:
            raise NotJson(f"not valid JSON: {err}") from err
    if too_deep(value, limits.max_depth):
        depth = json_depth(value)
        raise NotJson(
            f"nested {depth} levels deep; at most {limits.max_depth} are allowed (ORCH_HANDLER__MAX_JSON_DEPTH)"
        )
    return value


# Fields of The Things Stack's uplink_message (v3.36) that pass through as they are: an unknown name close
# to one the handler reads is a typo to refuse (`fport`), but never one of these.
TTS_UPLINK_FIELDS = frozenset(
    [
        "session_key_id",
        "f_port",
        "f_cnt",
        "frm_payload",
        "decoded_payload",
        "decoded_payload_warnings",
        "normalized_payload",
        "normalized_payload_warnings",
        "rx_metadata",
        "settings",
        "received_at",
        "app_s_key",
        "last_a_f_cnt_down",
        "confirmed",
        "consumed_airtime",
        "locations",
        "version_ids",
        "network_ids",
        "attributes",
        "last_battery_percentage",
        "packet_error_rate",
        "device_channel_index",
        "crc_status",
        "correlation_ids",
    ]
)
READ_FIELDS = tuple(UplinkSubmission.model_fields)
# What the handler sets in a whole message's envelope; anything else there (`simulated`, ...) passes through.
ENVELOPE_FIELDS = ("end_device_ids", "correlation_ids", "received_at")
REGISTRY_IDS = ("device_id", "application_ids", "dev_eui", "join_eui")  # from the registry, never the sender


@dataclass(frozen=True)
class Unwrapped:
    """A device message's own fields, and what a whole The Things Stack message carried around them."""

    fields: dict[str, Any]
    envelope: dict[str, Any]  # top-level fields the handler does not set (`simulated`, ...)
    device_ids: dict[str, Any]  # end_device_ids other than the registry's (`dev_addr`, ...)
    prefix: str  # where the fields were, for error messages: "" or "uplink_message."


# The field that carries each kind of The Things Stack message: one message carries one of them.
MESSAGE_FIELDS = (
    "uplink_message",
    "uplink_normalized",
    "join_accept",
    "downlink_ack",
    "downlink_nack",
    "downlink_sent",
    "downlink_failed",
    "downlink_queued",
    "downlink_queue_invalidated",
    "location_solved",
    "service_data",
)


def unwrap(body: dict[str, Any], field: str, name: str) -> Unwrapped:
    """The fields of a message given as they are, or inside a whole The Things Stack message
    (`{"end_device_ids": ..., "correlation_ids": [...], field: {...}}`); its correlation ids join the fields'.
    UplinkRejected when `field` or `end_device_ids` is not an object, or another kind of message comes along."""
    problems = [
        {"field": key, "message": "must be an object"}
        for key in (field, "end_device_ids")
        if key in body and not isinstance(body[key], dict)
    ]
    problems += [
        {"field": key, "message": f"one kind per message, and this one is {field}"}
        for key in MESSAGE_FIELDS
        if key in body and key != field
    ]
    if problems:
        raise rejected(name, problems)
    if field not in body:
        return Unwrapped(body, {}, {}, "")
    fields = dict(body[field])
    if body.get("correlation_ids"):
        fields.setdefault("correlation_ids", body["correlation_ids"])
    envelope = {key: value for key, value in body.items() if key not in (*ENVELOPE_FIELDS, field)}
    ids = body.get("end_device_ids") or {}
    device_ids = {key: value for key, value in ids.items() if key not in REGISTRY_IDS}
    return Unwrapped(fields, envelope, device_ids, f"{field}.")


def check_size(body: bytes | dict[str, Any], name: str, limits: Limits) -> dict[str, Any]:
    """A device message parsed (when bytes) and checked to be a JSON object within the limits."""
    if isinstance(body, bytes | bytearray):
        try:
            body = load_json(body, limits)
        except NotJson as err:
            raise UplinkRejected(f"{name} is {err}") from err
    if not isinstance(body, dict):
        raise UplinkRejected(f"{name} must be a JSON object")
    if too_deep(body, limits.max_depth):
        depth = json_depth(body)
        raise UplinkRejected(f"{name} is nested {depth} levels deep; at most {limits.max_depth} are allowed")
    return body


def rejected(name: str, problems: list[dict[str, str]]) -> UplinkRejected:
    """The error for a device message with these problems."""
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return UplinkRejected(f"invalid {name}: {summary}", problems)


@dataclass(frozen=True)
class Submission:
    """A checked uplink, with what a whole The Things Stack uplink carried around it."""

    uplink: UplinkSubmission
    envelope: dict[str, Any]  # top-level fields other than ENVELOPE_FIELDS (`simulated`, ...)
    device_ids: dict[str, Any]  # end_device_ids other than the registry's (`dev_addr`, ...)


def _typos(fields: dict[str, Any]) -> list[dict[str, str]]:
    """Unknown names that look like a field the handler reads (`fport` for `f_port`), as problems."""
    problems = []
    for name in fields:
        if name in TTS_UPLINK_FIELDS:
            continue
        close = difflib.get_close_matches(name, READ_FIELDS, n=1, cutoff=0.85)
        if close:
            problems.append({"field": name, "message": f"unknown field; did you mean {close[0]}?"})
    return problems


def parse_submission(body: bytes | dict[str, Any], limits: Limits = Limits()) -> Submission:
    """Parse and check an uplink body from MQTT or HTTP (bytes) or already-parsed JSON: its own fields, or a
    whole The Things Stack uplink (`{"end_device_ids": ..., "uplink_message": {...}, ...}`)."""
    message = unwrap(check_size(body, "uplink", limits), "uplink_message", "uplink")
    problems = [{**problem, "field": message.prefix + problem["field"]} for problem in _typos(message.fields)]
    try:
        uplink = UplinkSubmission.model_validate(message.fields)
    except ValidationError as err:
        problems += describe_errors(err, message.prefix.rstrip("."))
    if problems:
        raise rejected("uplink", problems)
    return Submission(uplink, message.envelope, message.device_ids)


def normalize(app_id: str, device: dict[str, Any], submission: Submission) -> dict[str, Any]:
    """The uplink as integrations receive it: the registry's ids, a fresh correlation id first, `received_at`,
    and every other field the sender gave, unchanged."""
    received_at = now_iso()
    uplink = submission.uplink
    message: dict[str, Any] = {
        key: value for key, value in uplink.model_dump(exclude={"correlation_ids"}).items() if value is not None
    }
    message.setdefault("received_at", received_at)
    ids = end_device_ids(app_id, device["device_id"], device.get("dev_eui"), device.get("join_eui"))
    return {
        **submission.envelope,
        "end_device_ids": {**ids, **submission.device_ids},
        "correlation_ids": [f"up:{uuid.uuid4().hex}", *uplink.correlation_ids],
        "received_at": received_at,
        "uplink_message": message,
    }
