"""Normalize what a device sends into The Things Stack v3 uplink JSON (pure functions)."""

from __future__ import annotations

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


def parse_submission(body: bytes | dict[str, Any], limits: Limits = Limits()) -> UplinkSubmission:
    """Parse and check an uplink body from MQTT or HTTP (bytes) or already-parsed JSON."""
    if isinstance(body, bytes | bytearray):
        try:
            body = load_json(body, limits)
        except NotJson as err:
            raise UplinkRejected(f"uplink is {err}") from err
    if not isinstance(body, dict):
        raise UplinkRejected("uplink must be a JSON object")
    if too_deep(body, limits.max_depth):
        depth = json_depth(body)
        raise UplinkRejected(f"uplink is nested {depth} levels deep; at most {limits.max_depth} are allowed")
    try:
        return UplinkSubmission.model_validate(body)
    except ValidationError as err:
        problems = describe_errors(err)
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise UplinkRejected(f"invalid uplink: {summary}", problems) from err


def normalize(app_id: str, device: dict[str, Any], submission: UplinkSubmission) -> dict[str, Any]:
    """The uplink as integrations receive it: ids, a fresh correlation id, and `received_at`."""
    received_at = now_iso()
    message: dict[str, Any] = {
        key: value for key, value in submission.model_dump(exclude={"correlation_ids"}).items() if value is not None
    }
    message["received_at"] = received_at
    correlation_ids = [f"up:{uuid.uuid4().hex}", *submission.correlation_ids]
    return {
        "end_device_ids": end_device_ids(app_id, device["device_id"], device.get("dev_eui"), device.get("join_eui")),
        "correlation_ids": correlation_ids,
        "received_at": received_at,
        "uplink_message": message,
    }
