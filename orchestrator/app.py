"""The FastAPI application: the API under /api/v1, the console at /, OpenAPI docs at /docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .api import install
from .config import Settings
from .wiring import Orchestrator

MAX_REQUEST_BYTES = 1_048_576


def create_app(settings: Settings | None = None, *, start_with_app: bool = True) -> FastAPI:
    """Build the orchestrator's parts and the app that serves them; they stop with the app.

    `start_with_app=False`: the caller starts `app.state.orchestrator` before serving (the CLI does, so a
    start that fails is one line, not a server's traceback).
    """
    settings = settings or Settings()
    orchestrator = Orchestrator.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if start_with_app:
            await orchestrator.start()
        try:
            yield
        finally:
            await orchestrator.stop()

    app = FastAPI(
        title="IoT integration orchestrator",
        version="0.1.0",
        description="Runs one worker per integration from generic per-platform images, and the handler "
        "(devices, uplinks, downlinks, events) they talk to.",
        lifespan=lifespan,
        # Bodies past this are refused (413) before they are read into memory; device messages have their own,
        # smaller limit (ORCH_HANDLER__MAX_MESSAGE_BYTES), named in a 422.
        max_body_size=max(MAX_REQUEST_BYTES, settings.handler.max_message_bytes),
    )
    app.state.orchestrator = orchestrator
    app.state.services = orchestrator.services
    install(app)
    return app
