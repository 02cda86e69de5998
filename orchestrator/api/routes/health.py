"""Liveness and readiness for operators and load balancers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..deps import PrincipalDep, ServicesDep

router = APIRouter(tags=["health"])


DEGRADED: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "Degraded: the body (the same report) names what is wrong",
        "content": {"application/json": {}},
    }
}


@router.get("/healthz", responses=DEGRADED)
async def health(services: ServicesDep) -> JSONResponse:
    """200 while the broker is connected and the database answers, 503 (naming what is wrong) otherwise."""
    healthy, body = services.health.report()
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/livez")
async def live() -> dict[str, str]:
    """200 while the process serves: for a liveness probe (a database or broker that is away is not cured by a
    restart, so it is not a reason to fail this)."""
    return {"status": "ok"}


@router.get("/readyz", responses=DEGRADED)
async def ready(services: ServicesDep) -> JSONResponse:
    """As /healthz: 200 when this instance can take requests (broker connected, database answering), else 503."""
    healthy, body = services.health.report()
    return JSONResponse(
        {"status": body["status"], "broker": body["broker"], "database": body["database"]},
        status_code=200 if healthy else 503,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus' text format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(services: ServicesDep, who: PrincipalDep) -> Response:
    """Every integration's counters and state, and this instance's own (admin; Prometheus sends the token as
    `authorization: {credentials: ...}` in its scrape config)."""
    who.require_admin()
    return Response(await services.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/api/v1/cluster")
async def cluster(services: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """The orchestrator instances on this database, and which one leads (runs the reconciler) since when (admin)."""
    who.require_admin()
    return await services.health.cluster_report()
