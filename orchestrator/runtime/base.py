"""The runtime contract: start, stop, status, logs, and listing what already runs (for adoption)."""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class WorkerState(StrEnum):
    """The state of an integration's worker: one type for runtimes, the reconciler, the API and the console."""

    PENDING = "pending"  # nothing started yet
    STARTING = "starting"  # started; not every replica has connected to the handler yet
    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"
    MISSING = "missing"  # the runtime has nothing under that name (never an integration's recorded state)


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a runtime needs to run one integration: image, environment, replicas, limits."""

    name: str
    application_id: str
    integration_id: str
    template_id: str
    template_version: str
    image: str
    python_module: str | None
    environment: dict[str, str]
    secret_env: tuple[str, ...] = ()
    replicas: int = 1
    memory_mb: int = 128
    cpus: float = 0.5

    @property
    def config_hash(self) -> str:
        """Changes whenever anything that needs a new worker changes."""
        material = json.dumps(
            [self.image, sorted(self.environment.items()), self.replicas, self.memory_mb, self.cpus],
            separators=(",", ":"),
        )
        return hashlib.sha256(material.encode()).hexdigest()[:32]

    def replica_environment(self, replica: int) -> dict[str, str]:
        """The environment of one replica."""
        return {
            **self.environment,
            "WORKER_REPLICA": str(replica),
            "WORKER_REPLICAS": str(self.replicas),
            "WORKER_SECRET_ENV": ",".join(self.secret_env),
        }


@dataclass
class WorkerStatus:
    """A runtime's view of one integration (all replicas together)."""

    state: WorkerState
    message: str = ""
    exit_code: int | None = None
    started_at: datetime | None = None
    config_hash: str | None = None
    handle: dict[str, Any] = field(default_factory=dict)
    replicas: int = 0  # how many replicas the runtime has for it, running or not


MISSING = WorkerStatus(WorkerState.MISSING)


class Runtime(abc.ABC):
    """A place where workers run. Lifecycle calls are idempotent; `status` never raises for "not found"."""

    name: str = "abstract"
    supports_replicas: bool = True
    supports_resource_limits: bool = False

    @abc.abstractmethod
    async def start(self, spec: WorkerSpec) -> dict[str, Any]:
        """Start the worker(s); returns the handle to keep on the integration. Raises RuntimeFailure."""

    @abc.abstractmethod
    async def stop(self, name: str) -> None:
        """Stop and remove the worker(s); nothing to stop is success."""

    @abc.abstractmethod
    async def status(self, name: str) -> WorkerStatus:
        """Current state; MISSING when nothing runs under that name."""

    @abc.abstractmethod
    async def logs(self, name: str, tail: int = 200) -> list[str]:
        """The last lines the worker(s) wrote."""

    @abc.abstractmethod
    def follow(self, name: str) -> AsyncIterator[str]:
        """New log lines as they come (until the caller stops reading)."""

    @abc.abstractmethod
    async def list_workers(self) -> dict[str, WorkerStatus]:
        """Everything this runtime runs for the orchestrator, by name: what a restart adopts."""

    async def check(self) -> None:  # noqa: B027 - optional hook
        """At start: RuntimeFailure naming what keeps this runtime from working (nothing to check by default)."""

    def worker_urls(self, broker_url: str, api_url: str) -> tuple[str, str]:
        """The broker and API URLs as workers of this runtime reach them (same as ours by default)."""
        return broker_url, api_url

    def extra_listen_addresses(self) -> list[str]:
        """Addresses besides our own where the broker and API must listen for workers to reach them."""
        return []

    async def close(self, *, keep_workers: bool = False) -> None:  # noqa: B027 - optional hook
        """Release clients; called when the orchestrator stops (`keep_workers`: another instance adopts them)."""
