"""The web console: static pages served at / that use the public API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount_console(app: FastAPI) -> None:
    """Serve the console at / (after the API routes, so they win)."""
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="console")
