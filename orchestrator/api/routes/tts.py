"""The Things Stack's own downlink paths, for platforms built for its webhooks: they push downlinks to the URL
of the `X-Downlink-Push` / `X-Downlink-Replace` header a webhook request carried, with the downlink key."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request

from ..deps import PrincipalDep, ServicesDep

router = APIRouter(prefix="/api/v3/as/applications/{app_id}/webhooks/{webhook_id}", tags=["the things stack"])

DOWNLINK_EXAMPLE: dict[str, Any] = {"downlinks": [{"f_port": 15, "frm_payload": "vu8=", "priority": "NORMAL"}]}


@router.post(
    "/devices/{device_id}/down/{operation}",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def push_downlinks(
    app_id: str,
    webhook_id: str,
    device_id: str,
    operation: Literal["push", "replace"],
    request: Request,
    services: ServicesDep,
    who: PrincipalDep,
) -> object:
    """Queue downlinks (`push`) or replace the queue (`replace`) as The Things Stack's webhook downlink API does;
    `Authorization: Bearer <downlink key>`, TTS's downlink JSON (an empty `replace` clears the queue)."""
    who.require(app_id, "downlinks:write")
    await services.integrations.get(app_id, webhook_id)  # 404 naming the webhook, as TTS answers
    return await services.devices.push_downlinks(
        app_id, device_id, await request.body(), replace=operation == "replace"
    )
