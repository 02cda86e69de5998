"""Normalize what a device sends into The Things Stack v3 uplink JSON (pure functions)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import ValidationError

from worker_sdk.messages import UplinkSubmission, describe_errors, end_device_ids, now_iso


class UplinkRejected(ValueError):
    """The device sent something that is not a valid uplink; `problems` names each mistake."""

    def __init__(self, message: str, problems: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def parse_submission(body: bytes | dict[str, Any]) -> UplinkSubmission:
    """Parse and check an uplink body from MQTT (bytes) or HTTP (already-parsed JSON)."""
    if isinstance(body, bytes | bytearray):
        try:
            body = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise UplinkRejected(f"uplink is not valid JSON: {err}") from err
    if not isinstance(body, dict):
        raise UplinkRejected("uplink must be a JSON object")
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
