"""The Docker runtime: one hardened container per integration replica, from the template's image."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from requests.exceptions import RequestException

from ..config import Settings
from ..errors import RuntimeFailure
from .base import MISSING, Runtime, WorkerSpec, WorkerState, WorkerStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

LABEL = "io.iot-orchestrator"
MANAGED = f"{LABEL}.managed"
INSTANCE = f"{LABEL}.instance"  # the instance that started it (for people; any instance of the cluster adopts it)
CLUSTER = f"{LABEL}.cluster"
MAX_NAME = 63
CPU_PERIOD_US = 1_000_000  # the longest period the kernel allows
HOST_ALIAS = "host.docker.internal"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def via_host_alias(url: str) -> str:
    """The URL with a loopback host replaced by the name containers use for the Docker host."""
    parts = urlsplit(url)
    if parts.hostname not in LOOPBACK:
        return url
    netloc = HOST_ALIAS + (f":{parts.port}" if parts.port else "")
    if parts.username:
        netloc = f"{parts.username}{':' + parts.password if parts.password else ''}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc))


def docker_available(timeout: float = 3.0) -> str | None:
    """None when a Docker engine answers; otherwise why not."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
        client.close()
    except DockerException as err:
        return f"no Docker engine answered ({err.__class__.__name__})"
    return None


def container_name(runtime_name: str, replica: int, config_hash: str) -> str:
    """A DNS-safe container name: `iot-<app>--<integration>-<replica>-<config>`, at most 63 characters."""
    name = f"iot-{runtime_name}-{replica}-{config_hash[:8]}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: MAX_NAME - 11].rstrip('-')}-{digest}"


def container_labels(spec: WorkerSpec, replica: int, instance: str, cluster: str) -> dict[str, str]:
    """What identifies a container as ours (never a secret: only ids, versions and a hash)."""
    return {
        MANAGED: "true",
        CLUSTER: cluster,
        INSTANCE: instance,
        f"{LABEL}.name": spec.name,
        f"{LABEL}.application": spec.application_id,
        f"{LABEL}.integration": spec.integration_id,
        f"{LABEL}.template": spec.template_id,
        f"{LABEL}.template-version": spec.template_version,
        f"{LABEL}.config-hash": spec.config_hash,
        f"{LABEL}.replica": str(replica),
    }


def container_options(
    spec: WorkerSpec, replica: int, network: str, instance: str, cluster: str | None = None
) -> dict[str, Any]:
    """Arguments of `containers.run`: hardened by default (non-root, read-only, no capabilities, limits)."""
    options: dict[str, Any] = {
        "image": spec.image,
        "name": container_name(spec.name, replica, spec.config_hash),
        "environment": spec.replica_environment(replica),
        "labels": container_labels(spec, replica, instance, cluster or instance),
        "detach": True,
        "user": "65532:65532",
        "read_only": True,
        "tmpfs": {"/tmp": "rw,noexec,nosuid,size=16m"},
        "security_opt": ["no-new-privileges:true"],
        "cap_drop": ["ALL"],
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",
        # The CPU limit as a share of each second rather than of each tenth (the default period): the same
        # average, but a worker's start (~0.35 s of CPU importing its libraries) runs unthrottled instead of
        # spread over 0.7 s at half a CPU.
        "cpu_period": CPU_PERIOD_US,
        "cpu_quota": max(1000, int(spec.cpus * CPU_PERIOD_US)),
        "pids_limit": 256,
        "restart_policy": {"Name": "unless-stopped"},
        "log_config": {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}},
    }
    if network == "host":
        options["network_mode"] = "host"
    else:
        options["network"] = network
        options["extra_hosts"] = {"host.docker.internal": "host-gateway"}
    return options


class DockerRuntime(Runtime):
    """Runs each replica as a container; containers outlive the orchestrator and are adopted by label."""

    name = "docker"
    supports_resource_limits = True

    def __init__(
        self,
        settings: Settings,
        client: Any = None,
        allowed_images: Callable[[], set[str]] | None = None,
        cluster: str | None = None,
    ):
        self.settings = settings.runtime.docker
        self.instance = settings.instance_id
        # Every instance on one database sees the same containers: the leader adopts a dead leader's workers.
        self.cluster = cluster or self.instance
        self.stop_timeout = int(settings.runtime.stop_timeout_seconds)
        self.client = client or docker.from_env(timeout=60)
        self.allowed_images = allowed_images
        self._network_checked = False

    def worker_urls(self, broker_url: str, api_url: str) -> tuple[str, str]:
        """On a bridge network, containers reach services on the host's loopback via the host alias."""
        if self.settings.network == "host":
            return broker_url, api_url
        return via_host_alias(broker_url), via_host_alias(api_url)

    def extra_listen_addresses(self) -> list[str]:
        """On a bridge network: the host's address on Docker's bridge, where the host alias points."""
        if self.settings.network == "host":
            return []
        try:
            bridge = self.client.networks.get("bridge")
            return [str(item["Gateway"]) for item in bridge.attrs["IPAM"]["Config"] if item.get("Gateway")]
        except (APIError, DockerException, KeyError) as err:
            log.warning(
                "cannot find the Docker bridge gateway (%s); set ORCH_BROKER__WORKER_URL and "
                "ORCH_PUBLIC_URL to addresses containers can reach",
                _short(err),
            )
            return []

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # The docker SDK blocks: keep it off the event loop.
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (DockerException, RequestException) as err:  # what the calls did not expect, e.g. no engine
            raise RuntimeFailure(f"the Docker engine failed: {_short(err)}") from err

    def _containers(self, name: str | None = None) -> list[Container]:
        # Only this cluster's containers: several orchestrators (on other databases) may share one engine.
        labels = [f"{MANAGED}=true", f"{CLUSTER}={self.cluster}"] + ([f"{LABEL}.name={name}"] if name else [])
        filters = {"label": labels}
        return list(self.client.containers.list(all=True, filters=filters))

    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
            return
        except ImageNotFound:
            pass
        try:
            log.info("image %s is not here; pulling it", image)
            self.client.images.pull(image)
        except (APIError, DockerException) as err:
            raise RuntimeFailure(
                f"image {image} is not available locally and could not be pulled ({_short(err)}); build it "
                "with ./scripts/build-images (add --local-base on machines without a registry)"
            ) from err

    def _ensure_network(self) -> None:
        network = self.settings.network
        if self._network_checked or network in ("host", "bridge", "none"):
            return
        try:
            self.client.networks.get(network)
        except NotFound:
            log.info("creating Docker network %s", network)
            self.client.networks.create(network, driver="bridge", labels={MANAGED: "true"})
        self._network_checked = True

    def _start(self, spec: WorkerSpec) -> dict[str, Any]:
        if self.allowed_images is not None and spec.image not in self.allowed_images():
            raise RuntimeFailure(f"image {spec.image} is not named by any registered template")
        self._ensure_image(spec.image)
        self._ensure_network()
        found = self._containers(spec.name)
        old = [c for c in found if c.labels.get(f"{LABEL}.config-hash") != spec.config_hash]
        current = {c.name: c for c in found if c not in old}
        started = []
        for replica in range(spec.replicas):
            options = container_options(spec, replica, self.settings.network, self.instance, self.cluster)
            existing = current.pop(options["name"], None)
            if existing is not None:
                _remove(existing, self.stop_timeout)  # same configuration but not running: start it afresh
            try:
                container = self.client.containers.run(**options)
            except (APIError, DockerException) as err:
                raise RuntimeFailure(f"cannot start a container from {spec.image}: {_short(err)}") from err
            started.append(container)
        # The new containers are up: now remove the old ones (their MQTT sessions pass to the new ones).
        for container in old + list(current.values()):
            _remove(container, self.stop_timeout)
        return {"containers": [c.name for c in started], "ids": [c.id[:12] for c in started]}

    async def start(self, spec: WorkerSpec) -> dict[str, Any]:
        """Start one container per replica; the previous configuration's containers go after."""
        return await self._call(self._start, spec)

    async def stop(self, name: str) -> None:
        """Stop and remove every container of the integration (nothing there is fine)."""

        def stop_all() -> None:
            for container in self._containers(name):
                _remove(container, self.stop_timeout)

        await self._call(stop_all)

    def _status(self, containers: list[Container]) -> WorkerStatus:
        if not containers:
            return MISSING
        handle = {
            "containers": [c.name for c in containers],
            "ids": [c.id[:12] for c in containers],
            "restarts": sum(int(c.attrs.get("RestartCount", 0)) for c in containers),
        }
        config_hash = containers[0].labels.get(f"{LABEL}.config-hash")
        started = _started_at(containers[0])
        for container in sorted(containers, key=lambda c: c.name):
            state = container.attrs.get("State", {})
            if state.get("Status") in ("exited", "dead") or (state.get("Status") == "created" and state.get("Error")):
                code = state.get("ExitCode")
                tail = " | ".join(_log_lines(container, 3))
                reason = "killed: out of memory" if state.get("OOMKilled") else f"exit code {code}"
                message = f"container {container.name} exited ({reason}): {tail or state.get('Error', '')}"
                return WorkerStatus(
                    WorkerState.FAILED,
                    message,
                    exit_code=code,
                    started_at=started,
                    config_hash=config_hash,
                    handle=handle,
                    replicas=len(containers),
                )
            if state.get("Status") == "restarting":
                return WorkerStatus(
                    WorkerState.STARTING,
                    f"{container.name} is restarting",
                    started_at=started,
                    config_hash=config_hash,
                    handle=handle,
                    replicas=len(containers),
                )
        health = containers[0].attrs.get("State", {}).get("Health", {}).get("Status")
        message = f"health check: {health}" if health and health != "healthy" else ""
        return WorkerStatus(
            WorkerState.RUNNING,
            message,
            started_at=started,
            config_hash=config_hash,
            handle=handle,
            replicas=len(containers),
        )

    async def status(self, name: str) -> WorkerStatus:
        """Running, restarting, or failed with exit code and the last log lines."""
        return await self._call(lambda: self._status(self._containers(name)))

    async def logs(self, name: str, tail: int = 200) -> list[str]:
        """Last lines of each replica's container."""

        def read() -> list[str]:
            containers = sorted(self._containers(name), key=lambda c: c.name)
            lines: list[str] = []
            for container in containers:
                prefix = f"[{container.labels.get(f'{LABEL}.replica', '?')}] " if len(containers) > 1 else ""
                lines += [prefix + line for line in _log_lines(container, tail)]
            return lines[-tail:]

        return await self._call(read)

    async def follow(self, name: str) -> AsyncIterator[str]:
        """New lines from every replica, streamed by the engine."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        containers = await self._call(self._containers, name)
        streams: list[Any] = []

        def pump(container: Container) -> None:
            try:
                stream = container.logs(stream=True, follow=True, since=int(datetime.now().timestamp()))
                streams.append(stream)
                for chunk in stream:
                    for line in chunk.decode("utf-8", "replace").splitlines():
                        loop.call_soon_threadsafe(queue.put_nowait, line)
            except (APIError, DockerException, ValueError):
                return

        for container in containers:
            threading.Thread(target=pump, args=(container,), daemon=True).start()
        try:
            while True:
                yield await queue.get()
        finally:
            for stream in streams:
                stream.close()

    async def list_workers(self) -> dict[str, WorkerStatus]:
        """Our containers (found by label), grouped by integration: what a restart adopts."""

        def collect() -> dict[str, WorkerStatus]:
            groups: dict[str, list[Container]] = {}
            for container in self._containers():
                groups.setdefault(container.labels.get(f"{LABEL}.name", ""), []).append(container)
            return {name: self._status(items) for name, items in groups.items() if name}

        return await self._call(collect)

    async def close(self, *, keep_workers: bool = False) -> None:
        """Containers keep running; only the client is closed."""
        await self._call(self.client.close)


def _remove(container: Container, timeout: int) -> None:
    try:
        container.stop(timeout=timeout)
    except NotFound:
        return
    except APIError as err:
        log.debug("stop %s: %s", container.name, err)
    try:
        container.remove(force=True)
    except NotFound:
        return
    except APIError as err:
        if err.status_code != 409:
            raise RuntimeFailure(f"cannot remove container {container.name}: {_short(err)}") from err
        # 409: someone else is removing it; return only once it is gone, as callers expect.
        try:
            container.wait(condition="removed", timeout=timeout + 30)
        except NotFound:
            return
        except (APIError, RequestException) as err:
            raise RuntimeFailure(f"container {container.name} is still being removed: {_short(err)}") from err


def _log_lines(container: Container, tail: int) -> list[str]:
    try:
        data = container.logs(tail=tail, stdout=True, stderr=True)
    except (APIError, DockerException):
        return []
    return list(data.decode("utf-8", "replace").splitlines())[-tail:]


def _started_at(container: Container) -> datetime | None:
    value = container.attrs.get("State", {}).get("StartedAt", "")
    try:
        return datetime.fromisoformat(value[:26].rstrip("Z") + "+00:00") if value else None
    except ValueError:
        return None


def _short(err: Exception) -> str:
    explanation = getattr(err, "explanation", None)
    return str(explanation or err).splitlines()[0][:300]
