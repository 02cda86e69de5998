"""Liveness and readiness for operators and load balancers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import OrchestratorDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def health(orch: OrchestratorDep) -> JSONResponse:
    """200 while the handler is connected to the broker, 503 otherwise."""
    connected = orch.handler.mqtt.is_connected
    body: dict[str, Any] = {
        "status": "ok" if connected else "degraded",
        "broker": "connected" if connected else "disconnected",
        "runtime": orch.runtime.name,
        "templates": len(orch.templates.templates),
        "reconciler": {"passes": orch.reconciler.passes, "last_pass_seconds": orch.reconciler.last_pass_seconds},
    }
    if orch.broker is not None:
        body["managed_broker"] = {"running": orch.broker.running(), "restarts": orch.broker.restarts}
    return JSONResponse(body, status_code=200 if connected else 503)
