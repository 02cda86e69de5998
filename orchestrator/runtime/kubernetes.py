"""The Kubernetes runtime: one StatefulSet (and one Secret) per integration, through the official client.

The objects come from the pure builders in `kubernetes_objects`; this module applies them, reads them back
(status, logs, adoption by label) and turns the API's answers into the runtime contract. The client blocks, so
every call runs in a thread; one client serves the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from ..config import Settings
from ..errors import RuntimeFailure
from .base import MISSING, Runtime, WorkerSpec, WorkerState, WorkerStatus
from .kubernetes_objects import CONTAINER, PREFIX, make_secret, make_statefulset, shorten, workload_name

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
POLL_SECONDS = 0.5
REQUEST_TIMEOUT_SECONDS = 30
# Why a container is not running, as the kubelet says it: each is a failure a person must act on.
PULL_FAILURES = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
CONFIG_FAILURES = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


def in_cluster() -> bool:
    """True inside a pod with a service account (the orchestrator deployed on Kubernetes)."""
    return (SERVICE_ACCOUNT / "token").exists()


def make_client(kubeconfig: Path | None, context: str | None) -> tuple[k8s.ApiClient, str | None]:
    """A client from the pod's service account, or a kubeconfig; with the namespace that configuration names."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig is None and context is None and in_cluster():
            k8s_config.load_incluster_config(client_configuration=configuration)
            namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip() or None
        else:
            path = str(kubeconfig) if kubeconfig else None
            k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
            _, active = k8s_config.list_kube_config_contexts(config_file=path)
            namespace = (active or {}).get("context", {}).get("namespace")
    except (k8s_config.ConfigException, OSError) as err:
        raise RuntimeFailure(
            f"no Kubernetes configuration: {err} (run in a pod with a service account, or set "
            "ORCH_RUNTIME__KUBERNETES__KUBECONFIG)"
        ) from err
    return k8s.ApiClient(configuration), namespace


def describe(err: Exception) -> str:
    """What a failed API call means, for a person: the API server's own message, or why it could not be reached."""
    if isinstance(err, ApiException):
        try:
            message = json.loads(err.body or "{}").get("message") or err.reason
        except (ValueError, AttributeError):
            message = err.reason
        if err.status == 403:
            return (
                f"the Kubernetes API refused: {message} (the orchestrator's Role must grant it; see docs/kubernetes.md)"
            )
        return f"the Kubernetes API answered {err.status}: {message}"
    return f"the Kubernetes API cannot be reached: {str(err).splitlines()[0][:300]}"


class KubernetesRuntime(Runtime):
    """Runs each integration as a StatefulSet of hardened pods; adopts them by label after a restart."""

    name = "kubernetes"
    supports_resource_limits = True

    def __init__(
        self,
        settings: Settings,
        *,
        allowed_images: Callable[[], set[str]] | None = None,
        cluster: str | None = None,
        api_client: k8s.ApiClient | None = None,
        namespace: str | None = None,
    ) -> None:
        options = settings.runtime.kubernetes
        if api_client is None:
            api_client, namespace = make_client(options.kubeconfig, options.context)
        self.api = api_client
        self.namespace = options.namespace or namespace or "default"
        self.apps = k8s.AppsV1Api(api_client)
        self.core = k8s.CoreV1Api(api_client)
        self.cluster = cluster or settings.instance_id
        self.allowed_images = allowed_images
        self.pull_policy = options.image_pull_policy
        self.pull_secrets = tuple(options.image_pull_secrets)
        self.stop_timeout = settings.runtime.stop_timeout_seconds

    # -- calls -------------------------------------------------------------------------------------

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call in a thread; API errors become RuntimeFailure naming what went wrong."""
        try:
            return await asyncio.to_thread(function, *args, **kwargs)
        except (ApiException, HTTPError) as err:
            raise RuntimeFailure(describe(err)) from err

    def _selector(self, name: str | None = None) -> str:
        parts = [f"{PREFIX}/managed=true", f"{PREFIX}/cluster={shorten(self.cluster, 63)}"]
        if name is not None:
            parts.append(f"app.kubernetes.io/instance={workload_name(name)}")
        return ",".join(parts)

    def _plain(self, value: Any) -> Any:
        """A client model as the JSON the API server sent (camelCase keys), so the interpreting code is plain."""
        return self.api.sanitize_for_serialization(value)

    async def check(self) -> None:
        """At start: the namespace exists and the orchestrator may create in it (a dry run); else a clear error."""
        probe = k8s.V1Secret(api_version="v1", kind="Secret", metadata=k8s.V1ObjectMeta(name="iot-orchestrator-probe"))
        try:
            await asyncio.to_thread(
                self.core.create_namespaced_secret, self.namespace, probe, dry_run="All", _request_timeout=10
            )
        except ApiException as err:
            if err.status == 404:
                raise RuntimeFailure(
                    f"ORCH_RUNTIME__KUBERNETES__NAMESPACE: namespace {self.namespace} does not exist"
                ) from err
            if err.status != 409:  # a leftover probe would be fine
                raise RuntimeFailure(describe(err)) from err
        except HTTPError as err:
            raise RuntimeFailure(describe(err)) from err

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, spec: WorkerSpec) -> dict[str, Any]:
        """Create or update the Secret and the StatefulSet; a changed configuration rolls the pods one by one.

        Asked to start what already runs (a restart after a crash), pods that are failing are deleted so the
        StatefulSet makes them afresh.
        """
        if self.allowed_images is not None and spec.image not in self.allowed_images():
            raise RuntimeFailure(f"image {spec.image} is not named by any registered template")
        secret = make_secret(spec, self.namespace, self.cluster)
        workload = make_statefulset(
            spec,
            self.namespace,
            self.cluster,
            image_pull_policy=self.pull_policy,
            image_pull_secrets=self.pull_secrets,
            termination_grace_seconds=int(self.stop_timeout),
        )
        await self._call(self._apply_secret, secret)
        await self._call(self._apply_workload, workload)
        await self._call(self._delete_failing_pods, spec.name)
        return {"statefulset": workload["metadata"]["name"], "namespace": self.namespace}

    def _apply_secret(self, data: dict[str, Any]) -> None:
        name, secret = data["metadata"]["name"], _model(k8s.V1Secret, data)
        try:
            self.core.create_namespaced_secret(self.namespace, secret, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as err:
            if err.status != 409:
                raise
            self.core.replace_namespaced_secret(name, self.namespace, secret, _request_timeout=REQUEST_TIMEOUT_SECONDS)

    def _apply_workload(self, data: dict[str, Any]) -> None:
        name = data["metadata"]["name"]
        deadline = time.monotonic() + self.stop_timeout + 60
        while True:
            try:
                current = self.apps.read_namespaced_stateful_set(
                    name, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            except ApiException as err:
                if err.status != 404:
                    raise
                current = None
            try:
                if current is None:
                    self.apps.create_namespaced_stateful_set(
                        self.namespace, _model(k8s.V1StatefulSet, data), _request_timeout=REQUEST_TIMEOUT_SECONDS
                    )
                    return
                metadata = current.metadata or k8s.V1ObjectMeta()
                if metadata.deletion_timestamp is None:
                    # The version read: a write in between (409) is read again rather than overwritten.
                    version = {"resourceVersion": metadata.resource_version}
                    workload = _model(k8s.V1StatefulSet, {**data, "metadata": {**data["metadata"], **version}})
                    self.apps.replace_namespaced_stateful_set(
                        name, self.namespace, workload, _request_timeout=REQUEST_TIMEOUT_SECONDS
                    )
                    return
            except ApiException as err:
                if err.status != 409:
                    raise
            # Being deleted, or changed meanwhile: wait, then look again.
            if time.monotonic() > deadline:
                raise RuntimeFailure(f"StatefulSet {name} is still being deleted or changed; try again later")
            time.sleep(POLL_SECONDS)

    def _pods(self, name: str | None = None) -> list[dict[str, Any]]:
        found = self.core.list_namespaced_pod(
            self.namespace, label_selector=self._selector(name), _request_timeout=REQUEST_TIMEOUT_SECONDS
        )
        return list(self._plain(found).get("items", []))

    def _delete_failing_pods(self, name: str) -> None:
        for pod in self._pods(name):
            if pod_failure(pod) is not None:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespaced_pod(
                        pod["metadata"]["name"], self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                    )

    async def stop(self, name: str) -> None:
        """Delete the StatefulSet (its pods first) and the Secret; returns once the pods are gone. Gone is success."""
        await self._call(self._stop, workload_name(name))

    def _stop(self, workload: str) -> None:
        body = k8s.V1DeleteOptions(propagation_policy="Foreground")
        try:
            self.apps.delete_namespaced_stateful_set(
                workload, self.namespace, body=body, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
        except ApiException as err:
            if err.status not in (404, 409):  # gone already; or being deleted (409): wait for it below
                raise
        # Foreground deletion removes the pods before the StatefulSet: once it is gone no worker of it runs,
        # so a new one with the same broker session cannot overlap an old one.
        deadline = time.monotonic() + self.stop_timeout + 60
        while time.monotonic() < deadline:
            try:
                self.apps.read_namespaced_stateful_set(
                    workload, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            except ApiException as err:
                if err.status == 404:
                    break
                raise
            time.sleep(POLL_SECONDS)
        else:
            raise RuntimeFailure(f"StatefulSet {workload} was not gone within {self.stop_timeout + 60:.0f} s")
        try:
            self.core.delete_namespaced_secret(workload, self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except ApiException as err:
            if err.status != 404:
                raise

    # -- watching ----------------------------------------------------------------------------------

    async def status(self, name: str) -> WorkerStatus:
        """From the StatefulSet and its pods: running when every replica is ready, else why not."""

        def read() -> WorkerStatus:
            try:
                workload = self.apps.read_namespaced_stateful_set(
                    workload_name(name), self.namespace, _request_timeout=REQUEST_TIMEOUT_SECONDS
                )
            except ApiException as err:
                if err.status == 404:
                    return MISSING
                raise
            return interpret(self._plain(workload), self._pods(name))

        return await self._call(read)

    async def list_workers(self) -> dict[str, WorkerStatus]:
        """Every StatefulSet of this cluster (found by label), by integration: what a restart adopts."""

        def collect() -> dict[str, WorkerStatus]:
            selector = self._selector()
            workloads = self.apps.list_namespaced_stateful_set(
                self.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT_SECONDS
            )
            pods: dict[str, list[dict[str, Any]]] = {}
            for pod in self._pods():
                instance = pod["metadata"].get("labels", {}).get("app.kubernetes.io/instance", "")
                pods.setdefault(instance, []).append(pod)
            found = {}
            for item in self._plain(workloads).get("items", []):
                metadata = item["metadata"]
                name = metadata.get("annotations", {}).get(f"{PREFIX}/name")
                if name and not metadata.get("deletionTimestamp"):
                    found[name] = interpret(item, pods.get(metadata["name"], []))
            return found

        return await self._call(collect)

    async def logs(self, name: str, tail: int = 200) -> list[str]:
        """The last lines of each replica's pod (prefixed with the replica when there are several)."""

        def read() -> list[str]:
            pods = sorted(self._pods(name), key=lambda pod: pod["metadata"]["name"])
            lines: list[str] = []
            for pod in pods:
                try:
                    text = self.core.read_namespaced_pod_log(
                        pod["metadata"]["name"],
                        self.namespace,
                        container=CONTAINER,
                        tail_lines=tail,
                        _request_timeout=REQUEST_TIMEOUT_SECONDS,
                    )
                except ApiException:
                    continue  # not started yet, or gone: nothing to show
                prefix = f"[{_ordinal(pod)}] " if len(pods) > 1 else ""
                lines += [prefix + line for line in str(text).splitlines()]
            return lines[-tail:]

        return await self._call(read)

    async def follow(self, name: str) -> AsyncIterator[str]:
        """New lines from every replica's pod, streamed by the API server."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        pods = await self._call(self._pods, name)
        sockets: list[socket.socket] = []

        def pump(pod: str) -> None:
            response: Any = None
            try:
                response = self.core.read_namespaced_pod_log(
                    pod, self.namespace, container=CONTAINER, follow=True, since_seconds=1, _preload_content=False
                )
                sock = getattr(getattr(response, "connection", None), "sock", None)
                if sock is not None:
                    sockets.append(sock)
                for line in response:
                    loop.call_soon_threadsafe(queue.put_nowait, line.decode("utf-8", "replace").rstrip("\n"))
            except (ApiException, HTTPError, OSError, ValueError, AttributeError):
                return
            finally:
                if response is not None:
                    with contextlib.suppress(Exception):
                        response.close()  # here, by the reading thread: another thread would wait on its lock

        for pod in pods:
            threading.Thread(target=pump, args=(pod["metadata"]["name"],), daemon=True).start()
        try:
            while True:
                yield await queue.get()
        finally:
            # A reader blocked on a stream wakes only when its connection ends: end them, the readers then close.
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    async def close(self, *, keep_workers: bool = False) -> None:
        """Workloads keep running; only the client is closed."""
        await asyncio.to_thread(self.api.close)


# -- reading what the API server says (pure functions on its JSON) ---------------------------------------


def _model(kind: Any, data: dict[str, Any]) -> Any:
    """A builder's dict as the client's model (checked by the client against the API's types)."""
    model = kind.from_dict(data)
    if model is None:
        raise RuntimeFailure(f"cannot build a {kind.__name__} from {sorted(data)}")
    return model


def _ordinal(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"]).rsplit("-", 1)[-1]


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return next((item for item in statuses if item.get("name") == CONTAINER), statuses[0] if statuses else {})


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def pod_failure(pod: dict[str, Any]) -> str | None:
    """Why this pod cannot run its worker, in words a person acts on; None while it runs or may yet start."""
    name = pod["metadata"]["name"]
    container = _container(pod)
    waiting = (container.get("state") or {}).get("waiting") or {}
    reason, message = waiting.get("reason", ""), waiting.get("message", "")
    last = (container.get("lastState") or {}).get("terminated") or {}
    if reason in PULL_FAILURES:
        image = container.get("image") or next(
            (item.get("image") for item in pod.get("spec", {}).get("containers", [])), "?"
        )
        return f"pod {name} cannot pull image {image} ({reason}): {message}".rstrip(": ")
    if reason == "CrashLoopBackOff":
        if last.get("reason") == "OOMKilled":
            return f"pod {name} was killed: out of memory (raise the integration's memory); it keeps restarting"
        code = last.get("exitCode")
        detail = last.get("message") or last.get("reason") or ""
        return f"pod {name} keeps crashing (exit code {code}): {detail}".rstrip(": ")
    if reason in CONFIG_FAILURES:
        return f"pod {name} cannot start its container ({reason}): {message}".rstrip(": ")
    if last.get("reason") == "OOMKilled" and not container.get("ready"):
        return f"pod {name} was killed: out of memory (raise the integration's memory)"
    for condition in pod.get("status", {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"pod {name} cannot be scheduled ({condition.get('reason')}): {condition.get('message', '')}"
    return None


def interpret(workload: dict[str, Any], pods: list[dict[str, Any]]) -> WorkerStatus:
    """The worker's state from its StatefulSet and pods (as the API server's JSON)."""
    metadata = workload.get("metadata", {})
    wanted = int(workload.get("spec", {}).get("replicas") or 0)
    pods = sorted(pods, key=lambda pod: pod["metadata"]["name"])
    restarts = sum(int(_container(pod).get("restartCount") or 0) for pod in pods)
    handle = {
        "statefulset": metadata.get("name"),
        "namespace": metadata.get("namespace"),
        "pods": [pod["metadata"]["name"] for pod in pods],
        "restarts": restarts,
    }
    config_hash = metadata.get("annotations", {}).get(f"{PREFIX}/config-hash")
    # When the worker last (re)started: a pod made anew or a container restarted is a new start (a new crash
    # to count, for the reconciler's back-off).
    starts = [_time(pod["metadata"].get("creationTimestamp")) for pod in pods]
    starts += [
        _time(((_container(pod).get("lastState") or {}).get("terminated") or {}).get("finishedAt")) for pod in pods
    ]
    started = max((moment for moment in starts if moment is not None), default=None)
    common = {"started_at": started, "config_hash": config_hash, "handle": handle, "replicas": max(wanted, len(pods))}
    for pod in pods:
        failure = pod_failure(pod)
        if failure is not None:
            last = (_container(pod).get("lastState") or {}).get("terminated") or {}
            return WorkerStatus(WorkerState.FAILED, failure, exit_code=last.get("exitCode"), **common)
    ready = sum(1 for pod in pods if _container(pod).get("ready"))
    if wanted and ready >= wanted and len(pods) == wanted:
        return WorkerStatus(WorkerState.RUNNING, "", **common)
    return WorkerStatus(WorkerState.STARTING, f"{ready} of {wanted} pods ready", **common)
