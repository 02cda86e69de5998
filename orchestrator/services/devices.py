"""Devices: the registry (database, the handler's cache and device events together), uplinks and downlinks."""

from __future__ import annotations

from typing import Any

from ..db import Database
from ..db.models import Device
from ..errors import ValidationFailed
from ..handler.core import Handler
from ..handler.uplinks import UplinkRejected
from ..schemas import DeviceCreate, DeviceUpdate
from ..store import devices as store


class DeviceService:
    """Every change to a device goes through here: database, then cache and event in one step."""

    def __init__(self, db: Database, handler: Handler) -> None:
        self.db = db
        self.handler = handler

    async def create(self, app_id: str, data: DeviceCreate) -> Device:
        """Register a device; emits `device.create`."""
        device = await self.db.run(store.create_device, app_id=app_id, data=data)
        await self.handler.device_changed("create", store.device_json(device))
        return device

    async def page(self, app_id: str, *, limit: int, offset: int) -> dict[str, Any]:
        """A page of devices, ordered by id."""
        items, total = await self.db.read(store.list_devices, app_id=app_id, limit=limit, offset=offset)
        return {"items": items, "total": total, "offset": offset, "limit": limit}

    async def get(self, app_id: str, device_id: str) -> Device:
        """One device, or NotFoundError."""
        return await self.db.read(store.get_device, app_id, device_id)

    async def update(self, app_id: str, device_id: str, data: DeviceUpdate) -> Device:
        """Change the given fields; emits `device.update`."""
        device = await self.db.run(store.update_device, app_id=app_id, device_id=device_id, data=data)
        await self.handler.device_changed("update", store.device_json(device))
        return device

    async def delete(self, app_id: str, device_id: str) -> None:
        """Remove a device; emits `device.delete`."""
        device = await self.db.run(store.delete_device, app_id=app_id, device_id=device_id)
        await self.handler.device_changed("delete", store.device_json(device))

    async def send_uplink(self, app_id: str, device_id: str, body: bytes) -> dict[str, Any]:
        """An uplink sent over HTTP: logged like one from MQTT; the answer carries the downlink sent back."""
        try:
            uplink, downlink = await self.handler.accept_uplink(app_id, device_id, body)
        except UplinkRejected as err:
            raise ValidationFailed(err.problems or [{"field": "(body)", "message": str(err)}]) from err
        return {"uplink": uplink, "downlink": downlink}

    async def send_report(self, app_id: str, device_id: str, kind: str, body: bytes) -> dict[str, Any]:
        """A join, downlink ack or nack, service data or solved location sent over HTTP; returns its event."""
        try:
            return await self.handler.accept_report(app_id, device_id, kind, body)
        except UplinkRejected as err:
            raise ValidationFailed(err.problems or [{"field": "(body)", "message": str(err)}]) from err

    async def push_downlinks(self, app_id: str, device_id: str, body: bytes, *, replace: bool) -> dict[str, Any]:
        """Queue downlinks (or replace the queue); returns them with their ids."""
        return {"downlinks": await self.handler.push_downlinks(app_id, device_id, body, replace=replace)}

    async def queued_downlinks(self, app_id: str, device_id: str) -> dict[str, Any]:
        """The device's queue, in sending order."""
        return {"downlinks": await self.handler.queued_downlinks(app_id, device_id)}

    async def clear_downlinks(self, app_id: str, device_id: str) -> None:
        """Drop the device's queue."""
        await self.handler.clear_downlinks(app_id, device_id)
