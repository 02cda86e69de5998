"""One place that turns errors into HTTP problem+json answers, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from worker_sdk.mqtt import MqttError

from ..errors import AuthenticationError, OrchestratorError, ValidationFailed

log = logging.getLogger(__name__)


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem document."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] if parts[0] == "body" else parts
    return ".".join(parts) or "(body)"


def install_problem_handlers(app: FastAPI) -> None:
    """Register the handlers."""

    @app.exception_handler(OrchestratorError)
    async def orchestrator_error(request: Request, err: OrchestratorError) -> JSONResponse:
        if isinstance(err, ValidationFailed):
            return problem(err.status, err.title, err.detail, errors=err.errors)
        if err.status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, err.detail)
        if isinstance(err, AuthenticationError):
            return problem(401, err.title, err.detail)
        response = problem(err.status, err.title, err.detail)
        if err.status == 503:  # unavailable for now (the database): worth trying again soon
            response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = []
        for item in err.errors():
            message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
            if item.get("type") == "extra_forbidden":
                message = "unknown field"
            if item.get("type") == "json_invalid":
                message = f"body is not valid JSON ({item.get('ctx', {}).get('error', 'parse error')})"
            errors.append({"field": _field(tuple(item.get("loc", ()))), "message": message})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(MqttError)
    async def broker_unavailable(request: Request, err: MqttError) -> JSONResponse:
        # Honest about the outcome: the client's MQTT library keeps an unacknowledged message and sends it
        # again when the broker is back, so it may still go through.
        log.error("%s %s failed: %s", request.method, request.url.path, err)
        detail = f"{err}; it may still go through once the broker recovers"
        response = problem(503, "Broker unavailable", detail)
        response.headers["Retry-After"] = "5"
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return problem(err.status_code, str(err.detail), str(err.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "something went wrong; the orchestrator log has the details")
