"""One place that turns errors into HTTP problem+json answers, never a stack trace."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from worker_sdk.mqtt import MqttError

from ..errors import AuthenticationError, OrchestratorError, ValidationFailed

log = logging.getLogger(__name__)


class FieldProblem(BaseModel):
    """One field at fault and what is wrong with it."""

    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document (`application/problem+json`): every error the API answers is one."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] | None = Field(None, description="With 422: each field at fault")


def _declared(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description}


# What any route may answer besides its success (declared in the OpenAPI document as problem+json).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _declared("No credentials, or neither the admin token nor a valid application key"),
    403: _declared("The key lacks the scope, or belongs to another application"),
    404: _declared("The application, device, integration or route does not exist"),
    405: _declared("The route does not take this method (`Allow` names those it takes)"),
    409: _declared("In conflict with what exists (an id taken, a key that belongs to an integration)"),
    413: {  # answered by Starlette's body limit, before any handler: plain text
        "description": "The body is larger than the API takes (1 MiB, or the device message limit if larger)",
        "content": {"text/plain": {"schema": {"type": "string", "example": "Content Too Large"}}},
    },
    422: _declared("The request is invalid: `errors` names each field at fault"),
    500: _declared("A bug: the orchestrator's log has the details"),
    502: _declared("The runtime (Docker, Kubernetes) failed; `detail` names how"),
    503: _declared("The database or the broker is away for now (`Retry-After`)"),
}


def declare_problem_content(app: FastAPI) -> None:
    """Have the OpenAPI document say `application/problem+json` for the error answers that are problems."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for response in operation.get("responses", {}).values():
                    content = response.get("content", {})
                    body = content.get("application/json", {})
                    if str(body.get("schema", {}).get("$ref", "")).endswith("/Problem"):
                        response["content"] = {"application/problem+json": body}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


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


def _matching_routes(request: Request, routes: list[Any]) -> list[Any]:
    found = []
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
        if included is not None:
            found += _matching_routes(request, included.routes)
        elif route.matches(request.scope)[0] != Match.NONE:  # PARTIAL: the path matches, the method does not
            found.append(route)
    return found


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of this path takes (Starlette names only the first matching route's); a route
    with fewer parameters (`.../integrations/validate`) wins over one with a parameter in that place."""
    routes = _matching_routes(request, request.app.router.routes)
    if not routes:
        return []
    parameters = {id(route): str(getattr(route, "path", "")).count("{") for route in routes}
    fewest = min(parameters.values())
    chosen = [route for route in routes if parameters[id(route)] == fewest]
    return sorted({method for route in chosen for method in getattr(route, "methods", None) or ()})


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
            field = _field(tuple(item.get("loc", ())))
            if item.get("type") == "json_invalid":  # its location ends with a character offset, not a field
                message = f"body is not valid JSON ({item.get('ctx', {}).get('error', 'parse error')})"
                field = "(body)"
            errors.append({"field": field, "message": message})
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
        if err.status_code == 400:  # the body could not be read as JSON at all (e.g. not UTF-8)
            message = f"not valid JSON: {err.detail}"
            return problem(422, "Invalid input", f"(body): {message}", errors=[{"field": "(body)", "message": message}])
        response = problem(err.status_code, str(err.detail), str(err.detail))
        response.headers.update(err.headers or {})
        if err.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return problem(500, "Internal error", "something went wrong; the orchestrator log has the details")
