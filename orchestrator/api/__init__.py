"""The HTTP API: routers, authentication, and problem+json errors."""

from __future__ import annotations

from fastapi import FastAPI

from .problems import ERROR_RESPONSES, declare_problem_content, install_problem_handlers
from .routes import applications, dead_letters, devices, events, health, integrations, particle, templates, tts


def install(app: FastAPI) -> None:
    """Mount every router, the error handlers and the console."""
    install_problem_handlers(app)
    for module in (health, applications, devices, events, integrations, dead_letters, templates, tts, particle):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    declare_problem_content(app)
    from ..console import mount_console

    mount_console(app)
