"""Runtimes run integration workers: a contract, and one module per backend."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..config import Settings
from ..errors import RuntimeFailure
from .base import Runtime, WorkerSpec, WorkerState, WorkerStatus
from .docker import DockerRuntime, docker_available
from .kubernetes import KubernetesRuntime, in_cluster
from .process import ProcessRuntime

log = logging.getLogger(__name__)

__all__ = [
    "DockerRuntime",
    "KubernetesRuntime",
    "ProcessRuntime",
    "Runtime",
    "WorkerSpec",
    "WorkerState",
    "WorkerStatus",
    "make_runtime",
]


def make_runtime(
    settings: Settings, allowed_images: Callable[[], set[str]] | None = None, cluster: str | None = None
) -> Runtime:
    """The runtime the settings ask for; `auto` picks Kubernetes in a pod, Docker when an engine answers, else
    processes.

    `cluster` names the workers every instance on one database shares.
    """
    kind = settings.runtime.kind
    if kind == "kubernetes" or (kind == "auto" and in_cluster()):
        log.info("runtime: kubernetes")
        return KubernetesRuntime(settings, allowed_images=allowed_images, cluster=cluster)
    if kind in ("auto", "docker"):
        reason = docker_available()
        if reason is None:
            log.info("runtime: docker (a Docker engine answered)")
            return DockerRuntime(settings, allowed_images=allowed_images, cluster=cluster)
        if kind == "docker":
            raise RuntimeFailure(f"ORCH_RUNTIME__KIND=docker but {reason}")
        log.info("runtime: process (%s)", reason)
    else:
        log.info("runtime: process (ORCH_RUNTIME__KIND=process)")
    return ProcessRuntime(
        settings.runtime.process_dir or settings.data_dir / "process",
        stop_timeout=settings.runtime.stop_timeout_seconds,
        log_max_bytes=settings.runtime.log_max_bytes,
    )
