"""Pub/Sub messages to and from the handler's shapes (pure functions)."""

from __future__ import annotations

import json
import re
from typing import Any

from worker_sdk import Event
from worker_sdk.messages import ID_PATTERN, InvalidDownlink, validate_downlinks

DOWNLINK_FIELDS = ("f_port", "frm_payload", "decoded_payload", "confirmed", "priority", "correlation_ids")


def attributes_for(event: Event, integration_id: str) -> dict[str, str]:
    """Pub/Sub attributes of a published event (all strings, as Pub/Sub requires)."""
    return {
        "application_id": event.application_id,
        "device_id": event.device_id,
        "event": event.name,
        "correlation_id": (event.correlation_ids or [""])[0],
        "received_at": event.received_at,
        "integration_id": integration_id,
    }


def parse_downlink(data: bytes, attributes: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """The device id and downlinks a message asks for; InvalidDownlink names what is wrong."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidDownlink(f"message data is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise InvalidDownlink("message data must be a JSON object")
    device_id = (
        attributes.get("device_id")
        or body.get("device_id")
        or (
            (body.get("end_device_ids") or {}).get("device_id")
            if isinstance(body.get("end_device_ids"), dict)
            else None
        )
    )
    if not device_id or not isinstance(device_id, str):
        raise InvalidDownlink("no device: set the device_id attribute or a device_id field")
    if not re.match(ID_PATTERN, device_id):
        raise InvalidDownlink(f"device_id {device_id!r} is not a valid device id")
    items = (
        body["downlinks"]
        if isinstance(body.get("downlinks"), list)
        else [{key: value for key, value in body.items() if key in DOWNLINK_FIELDS}]
    )
    return device_id, validate_downlinks(items)
