"""Devices, uplinks sent over HTTP, and downlink queues."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Query, status

from ...errors import ValidationFailed
from ...handler import downlinks, registry
from ...handler.uplinks import UplinkRejected
from ...schemas import DeviceCreate, DevicePublic, DeviceUpdate, Page
from ..deps import OrchestratorDep, PrincipalDep

router = APIRouter(prefix="/api/v1/applications/{app_id}/devices", tags=["devices"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DevicePublic)
async def create_device(app_id: str, body: DeviceCreate, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """Register a device; emits `device.create`."""
    who.require(app_id, "devices:write")
    device = await orch.handler.run_db(registry.create_device, app_id=app_id, data=body)
    await orch.handler.device_changed("create", registry.device_json(device))
    return device


@router.get("", response_model=Page[DevicePublic])
async def list_devices(
    app_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
) -> object:
    """A page of devices, ordered by id."""
    who.require(app_id, "devices:read")
    items, total = await orch.handler.run_db(registry.list_devices, app_id=app_id, limit=limit, offset=offset)
    return {"items": items, "total": total, "offset": offset, "limit": limit}


@router.get("/{device_id}", response_model=DevicePublic)
async def get_device(app_id: str, device_id: str, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """One device."""
    who.require(app_id, "devices:read")
    return await orch.handler.run_db(registry.get_device, app_id, device_id)


@router.patch("/{device_id}", response_model=DevicePublic)
async def update_device(
    app_id: str, device_id: str, body: DeviceUpdate, orch: OrchestratorDep, who: PrincipalDep
) -> object:
    """Change the given fields; emits `device.update`."""
    who.require(app_id, "devices:write")
    device = await orch.handler.run_db(registry.update_device, app_id=app_id, device_id=device_id, data=body)
    await orch.handler.device_changed("update", registry.device_json(device))
    return device


@router.delete("/{device_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_device(app_id: str, device_id: str, orch: OrchestratorDep, who: PrincipalDep) -> None:
    """Remove a device; emits `device.delete`."""
    who.require(app_id, "devices:write")
    device = await orch.handler.run_db(registry.delete_device, app_id=app_id, device_id=device_id)
    await orch.handler.device_changed("delete", registry.device_json(device))


@router.post("/{device_id}/uplinks", status_code=status.HTTP_201_CREATED)
async def send_uplink(
    app_id: str,
    device_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    body: Any = Body(..., examples=[{"f_port": 1, "frm_payload": "AQI=", "decoded_payload": {"temperature": 21.5}}]),
) -> object:
    """Send an uplink as the device (or a simulator); the answer carries the downlink sent back, if any."""
    who.require(app_id, "uplinks:write")
    await orch.handler.run_db(registry.get_device, app_id, device_id)  # 404 for unknown ids
    try:
        uplink, downlink = await orch.handler.accept_uplink(app_id, device_id, body)
    except UplinkRejected as err:
        raise ValidationFailed(err.problems or [{"field": "(body)", "message": str(err)}]) from err
    return {"uplink": uplink, "downlink": downlink}


@router.post("/{device_id}/downlinks", status_code=status.HTTP_201_CREATED)
async def push_downlinks(
    app_id: str,
    device_id: str,
    orch: OrchestratorDep,
    who: PrincipalDep,
    replace: bool = Query(False, description="Replace the queue instead of appending"),
    body: Any = Body(..., examples=[{"downlinks": [{"f_port": 2, "frm_payload": "AQ=="}]}]),
) -> object:
    """Queue downlinks (like MQTT `down/push`, or `down/replace` with ?replace=true); returns their ids."""
    who.require(app_id, "downlinks:write")
    await orch.handler.run_db(registry.get_device, app_id, device_id)
    return {"downlinks": await orch.handler.push_downlinks(app_id, device_id, body, replace=replace)}


@router.get("/{device_id}/downlinks")
async def list_downlinks(app_id: str, device_id: str, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """The device's queue, in sending order."""
    who.require(app_id, "messages:read")
    await orch.handler.run_db(registry.get_device, app_id, device_id)
    items = await orch.handler.run_db(downlinks.queued, app_id=app_id, device_id=device_id)
    return {"downlinks": [{"id": item.id, "queued_at": item.queued_at, **item.body} for item in items]}


@router.delete("/{device_id}/downlinks", status_code=status.HTTP_204_NO_CONTENT)
async def clear_downlinks(app_id: str, device_id: str, orch: OrchestratorDep, who: PrincipalDep) -> None:
    """Drop the device's queue."""
    who.require(app_id, "downlinks:write")
    await orch.handler.run_db(registry.get_device, app_id, device_id)
    await orch.handler.clear_downlinks(app_id, device_id)
