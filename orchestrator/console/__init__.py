"""The web console: static pages served at / that use the public API."""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.routing import Match, Mount

STATIC = Path(__file__).parent / "static"


class ConsoleMount(Mount):
    """The console at /, leaving the API's paths alone: a method an API route does not take is a 405 naming
    those it takes, and an unknown API path a 404 problem, not a missing file."""

    def matches(self, scope: MutableMapping[str, Any]) -> tuple[Match, MutableMapping[str, Any]]:
        if scope.get("type") == "http" and str(scope.get("path", "")).startswith("/api/"):
            return Match.NONE, {}
        return super().matches(scope)


def mount_console(app: FastAPI) -> None:
    """Serve the console at / (after the API routes, so they win)."""
    app.router.routes.append(ConsoleMount("/", app=StaticFiles(directory=STATIC, html=True), name="console"))
