"""Runtimes run integration workers: a contract, and one module per backend."""

from __future__ import annotations

import logging

from ..config import Settings
from .base import Runtime, WorkerSpec, WorkerState, WorkerStatus
from .process import ProcessRuntime

log = logging.getLogger(__name__)

__all__ = ["ProcessRuntime", "Runtime", "WorkerSpec", "WorkerState", "WorkerStatus", "make_runtime"]


def make_runtime(settings: Settings) -> Runtime:
    """The runtime the settings ask for; `auto` picks Docker when an engine answers, else processes."""
    kind = settings.runtime.kind
    if kind in ("auto", "docker"):
        try:
            from .docker import DockerRuntime, docker_available
        except ImportError:  # the Docker runtime is not part of this build
            docker_available = None
        if docker_available is not None:
            reason = docker_available()
            if reason is None:
                return DockerRuntime(settings)
            if kind == "docker":
                from ..errors import RuntimeFailure

                raise RuntimeFailure(f"ORCH_RUNTIME__KIND=docker but {reason}")
            log.info("no Docker engine (%s): using the process runtime", reason)
    return ProcessRuntime(
        settings.data_dir / "process",
        stop_timeout=settings.runtime.stop_timeout_seconds,
        log_max_bytes=settings.runtime.log_max_bytes,
    )
