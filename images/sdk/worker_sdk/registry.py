"""The worker's copy of the application's device registry: loaded over HTTP, kept current by events."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import aiohttp

log = logging.getLogger(__name__)
PAGE_SIZE = 500


@dataclass
class Device:
    """One device as the handler's registry describes it."""

    device_id: str
    name: str = ""
    dev_eui: str | None = None
    join_eui: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Device:
        """Build from the registry's JSON, ignoring fields this SDK does not know."""
        return cls(
            device_id=data["device_id"],
            name=data.get("name") or "",
            dev_eui=data.get("dev_eui"),
            join_eui=data.get("join_eui"),
            attributes=dict(data.get("attributes") or {}),
        )


class DeviceRegistry:
    """Devices of one application, by id."""

    def __init__(self, api_url: str, application_id: str, api_key: str) -> None:
        self._url = f"{api_url.rstrip('/')}/api/v1/applications/{application_id}/devices"
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self.devices: dict[str, Device] = {}

    def get(self, device_id: str) -> Device | None:
        """The device with this id, if the registry has it."""
        return self.devices.get(device_id)

    async def load(self, session: aiohttp.ClientSession) -> None:
        """Fetch every device, page by page, replacing what was known."""
        devices: dict[str, Device] = {}
        offset = 0
        while True:
            params = {"limit": str(PAGE_SIZE), "offset": str(offset)}
            async with session.get(self._url, params=params, headers=self._headers) as response:
                if response.status != 200:
                    text = (await response.text())[:200]
                    raise RuntimeError(f"device registry answered HTTP {response.status}: {text}")
                page = await response.json()
            for item in page["items"]:
                devices[item["device_id"]] = Device.from_json(item)
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                break
        self.devices = devices
        log.info("device registry loaded: %d devices", len(devices))

    def apply(self, event: str, device: dict[str, Any]) -> Device:
        """Apply one device event (`device.create|update|delete`) and return the device."""
        item = Device.from_json(device)
        if event == "device.delete":
            self.devices.pop(item.device_id, None)
        else:
            self.devices[item.device_id] = item
        return item
