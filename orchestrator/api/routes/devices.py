"""Devices, uplinks sent over HTTP, and downlink queues."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request, status

from ...schemas import DeviceCreate, DevicePublic, DeviceUpdate, Page
from ..deps import MAX_OFFSET, PrincipalDep, ServicesDep
from ..responses import page_answer

router = APIRouter(prefix="/api/v1/applications/{app_id}/devices", tags=["devices"])

UPLINK_EXAMPLE = {"f_port": 1, "frm_payload": "AQI=", "decoded_payload": {"temperature": 21.5}}
DOWNLINK_EXAMPLE = {"downlinks": [{"f_port": 2, "frm_payload": "AQ=="}]}
JOIN_EXAMPLE = {"session_key_id": "AXBSH1Pk6Z0G166RlH16CQ=="}
# Report paths over HTTP and the MQTT topics (`{topic}/push`) they stand for.
REPORTS = {
    "join": "join",
    "downlink-ack": "down/ack",
    "downlink-nack": "down/nack",
    "service-data": "service/data",
    "location-solved": "location/solved",
    "publish": "publish",
}
ReportKind = Literal["join", "downlink-ack", "downlink-nack", "service-data", "location-solved", "publish"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
async def create_device(app_id: str, body: DeviceCreate, services: ServicesDep, who: PrincipalDep) -> object:
    """Register a device; emits `device.create`."""
    who.require(app_id, "devices:write")
    return await services.devices.create(app_id, body)


@router.get("", response_model=Page[DevicePublic])
async def list_devices(
    app_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> object:
    """A page of devices, ordered by id."""
    who.require(app_id, "devices:read")
    return page_answer(await services.devices.page(app_id, limit=limit, offset=offset))


@router.get("/{device_id}", response_model=DevicePublic)
async def get_device(app_id: str, device_id: str, services: ServicesDep, who: PrincipalDep) -> object:
    """One device."""
    who.require(app_id, "devices:read")
    return await services.devices.get(app_id, device_id)


@router.patch("/{device_id}", response_model=DevicePublic)
async def update_device(
    app_id: str, device_id: str, body: DeviceUpdate, services: ServicesDep, who: PrincipalDep
) -> object:
    """Change the given fields; emits `device.update`."""
    who.require(app_id, "devices:write")
    return await services.devices.update(app_id, device_id, body)


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_device(app_id: str, device_id: str, services: ServicesDep, who: PrincipalDep) -> None:
    """Remove a device; emits `device.delete`."""
    who.require(app_id, "devices:write")
    await services.devices.delete(app_id, device_id)


# The bodies below are read as bytes and parsed by the handler, exactly as MQTT's are: the same checks and
# the same `uplink.error` / `downlink.failed` events for both ways in. The OpenAPI extras only document them.


def _json_body(example: dict[str, Any]) -> dict[str, Any]:
    content = {"application/json": {"schema": {"type": "object"}, "example": example}}
    return {"requestBody": {"required": True, "content": content}}


@router.post("/{device_id}/uplinks", status_code=status.HTTP_201_CREATED, openapi_extra=_json_body(UPLINK_EXAMPLE))
async def send_uplink(
    app_id: str, device_id: str, request: Request, services: ServicesDep, who: PrincipalDep
) -> object:
    """Send an uplink as the device (or a simulator); logged before the answer, which carries the downlink
    sent back, if any."""
    who.require(app_id, "uplinks:write")
    return await services.devices.send_uplink(app_id, device_id, await request.body())


@router.post("/{device_id}/reports/{kind}", status_code=status.HTTP_201_CREATED, openapi_extra=_json_body(JOIN_EXAMPLE))
async def send_report(
    app_id: str, device_id: str, kind: ReportKind, request: Request, services: ServicesDep, who: PrincipalDep
) -> object:
    """Report what The Things Stack's network server would for the device (like MQTT `join/push`, ...): a join, its
    ack or nack of a confirmed downlink, service data or a solved location; logged, and answered with the event."""
    who.require(app_id, "uplinks:write")
    return await services.devices.send_report(app_id, device_id, REPORTS[kind], await request.body())


@router.post("/{device_id}/downlinks", status_code=status.HTTP_201_CREATED, openapi_extra=_json_body(DOWNLINK_EXAMPLE))
async def push_downlinks(
    app_id: str,
    device_id: str,
    request: Request,
    services: ServicesDep,
    who: PrincipalDep,
    replace: bool = Query(False, description="Replace the queue instead of appending"),
) -> object:
    """Queue downlinks (like MQTT `down/push`, or `down/replace` with ?replace=true); returns their ids."""
    who.require(app_id, "downlinks:write")
    return await services.devices.push_downlinks(app_id, device_id, await request.body(), replace=replace)


@router.get("/{device_id}/downlinks")
async def list_downlinks(app_id: str, device_id: str, services: ServicesDep, who: PrincipalDep) -> object:
    """The device's queue, in sending order."""
    who.require(app_id, "messages:read")
    return await services.devices.queued_downlinks(app_id, device_id)


@router.delete("/{device_id}/downlinks", status_code=status.HTTP_204_NO_CONTENT)
async def clear_downlinks(app_id: str, device_id: str, services: ServicesDep, who: PrincipalDep) -> None:
    """Drop the device's queue."""
    who.require(app_id, "downlinks:write")
    await services.devices.clear_downlinks(app_id, device_id)
