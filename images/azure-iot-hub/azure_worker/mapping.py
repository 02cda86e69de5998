"""Between the handler's shapes and IoT Hub's: device ids, twin tags, message properties, downlinks (pure)."""

from __future__ import annotations

import base64
import json
from typing import Any

from worker_sdk import Device, Event
from worker_sdk.messages import InvalidDownlink, validate_downlinks

MANAGED_TAG = "orchestrator"


def hub_device_id(prefix: str, device_id: str) -> str:
    """The hub's id of a handler device."""
    return prefix + device_id


def handler_device_id(prefix: str, hub_id: str) -> str | None:
    """The handler's id of a hub device, or None when it is not one of ours (prefix mismatch)."""
    return hub_id[len(prefix) :] if hub_id.startswith(prefix) and len(hub_id) > len(prefix) else None


def device_tags(app_id: str, integration_id: str, device: Device) -> dict[str, Any]:
    """Twin tags: who manages the device, and the device's registry data."""
    return {
        MANAGED_TAG: {"application": app_id, "integration": integration_id},
        "name": device.name,
        "devEui": device.dev_eui,
        "attributes": dict(device.attributes),
    }


def managed_by(twin: dict[str, Any], app_id: str, integration_id: str) -> bool:
    """True when our tags say this integration created the device."""
    tag = (twin.get("tags") or {}).get(MANAGED_TAG) or {}
    return bool(tag.get("application") == app_id and tag.get("integration") == integration_id)


def telemetry_properties(event: Event) -> dict[str, str]:
    """Application properties of a device-to-cloud message (strings, as the hub requires)."""
    uplink = event.payload.get("uplink_message") or {}
    properties = {
        "application_id": event.application_id,
        "device_id": event.device_id,
        "event": event.name,
        "correlation_id": (event.correlation_ids or [""])[0],
    }
    if uplink.get("f_port") is not None:
        properties["f_port"] = str(uplink["f_port"])
    return properties


def c2d_downlinks(data: bytes, properties: dict[str, Any], default_port: int) -> list[dict[str, Any]]:
    """Downlinks from a cloud-to-device message: JSON in the handler's shape, or raw bytes as the payload.

    Properties `f_port` (or `fPort`), `confirmed` and `priority` apply to raw payloads.
    """
    port = properties.get("f_port") or properties.get("fPort") or default_port
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and isinstance(body.get("downlinks"), list):
        return validate_downlinks(body["downlinks"])
    if isinstance(body, dict) and ("frm_payload" in body or "decoded_payload" in body):
        return validate_downlinks([{"f_port": port, **body}])
    if not data:
        raise InvalidDownlink("the message is empty")
    raw = {"f_port": port, "frm_payload": base64.b64encode(data).decode()}
    if "confirmed" in properties:
        raw["confirmed"] = str(properties["confirmed"]).lower() == "true"
    if "priority" in properties:
        raw["priority"] = properties["priority"]
    return validate_downlinks([raw])


def desired_downlinks(patch: dict[str, Any], default_port: int) -> list[dict[str, Any]]:
    """Downlinks from a desired-properties patch: `decodedPayload` (with optional `fPort`) or `downlink`."""
    if isinstance(patch.get("downlink"), dict):
        return validate_downlinks([{"f_port": default_port, **patch["downlink"]}])
    if "decodedPayload" in patch:
        decoded = patch["decodedPayload"]
        if not isinstance(decoded, dict):
            raise InvalidDownlink("decodedPayload must be an object")
        return validate_downlinks([{"f_port": patch.get("fPort", default_port), "decoded_payload": decoded}])
    return []
