"""Kubernetes objects of an integration's worker as plain data: pure builders, tested (and schema-checked) as dicts.

Each integration is one StatefulSet, not a Deployment: a worker's broker session is named after its replica
index, and a StatefulSet gives every replica a stable index (its pod's ordinal) and never runs two pods with one
index, so a replacement resumes the session (and the messages the broker queued in it) instead of two pods
taking it from each other. Secret values go into a Secret of their own that the pods reference.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .base import WorkerSpec

PREFIX = "iot-orchestrator.io"
MANAGED_BY = "iot-orchestrator"
# A StatefulSet's name is also in its pods' `controller-revision-hash` label (name + "-" + 10 characters), which
# must fit 63 characters: Kubernetes advises names of at most 52.
MAX_WORKLOAD_NAME = 52
MAX_LABEL_VALUE = 63
CONTAINER = "worker"
HEALTH_COMMAND = ["python3", "-m", "worker_sdk.healthcheck"]  # the images' own HEALTHCHECK
# The pod's ordinal as the StatefulSet controller labels it (Kubernetes 1.28 and later): the worker's replica.
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"
UID = 65532  # the images' unprivileged user


def shorten(value: str, limit: int) -> str:
    """`value` if it fits, else its start and a hash of the whole: deterministic, distinct, DNS-safe ends."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:8]
    return f"{value[: limit - 9].rstrip('-.')}-{digest}"


def workload_name(runtime_name: str) -> str:
    """The StatefulSet (and Secret) name of an integration: `iot-<app>--<integration>`, shortened to fit."""
    return shorten(f"iot-{runtime_name}", MAX_WORKLOAD_NAME)


def selector_labels(spec: WorkerSpec, cluster: str) -> dict[str, str]:
    """What selects an integration's pods (fixed for the workload's life: a StatefulSet's selector cannot change)."""
    return {
        "app.kubernetes.io/name": "integration-worker",
        "app.kubernetes.io/instance": workload_name(spec.name),
        f"{PREFIX}/cluster": shorten(cluster, MAX_LABEL_VALUE),
    }


def labels(spec: WorkerSpec, cluster: str) -> dict[str, str]:
    """The recommended `app.kubernetes.io/*` labels and the project's own; values fit 63 characters."""
    return {
        **selector_labels(spec, cluster),
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/part-of": "iot-orchestrator",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": shorten(spec.template_version, MAX_LABEL_VALUE),
        f"{PREFIX}/managed": "true",
        f"{PREFIX}/application": shorten(spec.application_id, MAX_LABEL_VALUE),
        f"{PREFIX}/integration": shorten(spec.integration_id, MAX_LABEL_VALUE),
        f"{PREFIX}/template": shorten(spec.template_id, MAX_LABEL_VALUE),
    }


def workload_annotations(spec: WorkerSpec) -> dict[str, str]:
    """Full ids (labels may be shortened) and the configuration's hash the reconciler compares."""
    return {
        f"{PREFIX}/name": spec.name,
        f"{PREFIX}/application-id": spec.application_id,
        f"{PREFIX}/integration-id": spec.integration_id,
        f"{PREFIX}/template-version": spec.template_version,
        f"{PREFIX}/config-hash": spec.config_hash,
    }


def pod_environment(spec: WorkerSpec) -> dict[str, str]:
    """The environment every pod shares: the replica index comes from the pod itself, and the replica count is left
    out so that scaling changes the StatefulSet's replicas without replacing the pods that run."""
    environment = spec.replica_environment(0)
    del environment["WORKER_REPLICA"], environment["WORKER_REPLICAS"]
    return environment


def pod_hash(spec: WorkerSpec) -> str:
    """Changes whenever the pods must be replaced (image, environment, limits); not with the replica count."""
    material = json.dumps(
        [spec.image, sorted(pod_environment(spec).items()), spec.memory_mb, spec.cpus], separators=(",", ":")
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def make_secret(spec: WorkerSpec, namespace: str, cluster: str) -> dict[str, Any]:
    """The Secret holding the integration's secret environment values (its worker key among them)."""
    environment = pod_environment(spec)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": workload_name(spec.name),
            "namespace": namespace,
            "labels": labels(spec, cluster),
            "annotations": {f"{PREFIX}/name": spec.name},
        },
        "type": "Opaque",
        "stringData": {name: environment[name] for name in spec.secret_env if name in environment},
    }


def _container_environment(spec: WorkerSpec) -> list[dict[str, Any]]:
    secret_name = workload_name(spec.name)
    items: list[dict[str, Any]] = [
        {"name": "WORKER_REPLICA", "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{POD_INDEX_LABEL}']"}}}
    ]
    for name, value in sorted(pod_environment(spec).items()):
        if name in spec.secret_env:
            items.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": name}}})
        else:
            items.append({"name": name, "value": value})
    return items


def _resources(spec: WorkerSpec) -> dict[str, Any]:
    # Memory is capped; CPU is requested (its share under contention) but not capped: a CFS quota per 100 ms
    # would throttle every start (a worker spends ~0.35 s of CPU importing its libraries) for no gain.
    memory = f"{spec.memory_mb}Mi"
    return {"requests": {"memory": memory, "cpu": f"{max(1, round(spec.cpus * 1000))}m"}, "limits": {"memory": memory}}


def make_statefulset(
    spec: WorkerSpec,
    namespace: str,
    cluster: str,
    *,
    image_pull_policy: str = "IfNotPresent",
    image_pull_secrets: tuple[str, ...] = (),
    termination_grace_seconds: int = 15,
) -> dict[str, Any]:
    """The StatefulSet running the integration's replicas in hardened pods."""
    name = workload_name(spec.name)
    probe = {"exec": {"command": HEALTH_COMMAND}, "timeoutSeconds": 5}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # workers never talk to the Kubernetes API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": CONTAINER,
                "image": spec.image,
                "imagePullPolicy": image_pull_policy,
                "env": _container_environment(spec),
                "resources": _resources(spec),
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                "readinessProbe": {**probe, "periodSeconds": 5},
                "livenessProbe": {**probe, "initialDelaySeconds": 20, "periodSeconds": 15, "failureThreshold": 3},
            }
        ],
        "volumes": [{"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}],
    }
    if image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": secret} for secret in image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels(spec, cluster),
            "annotations": workload_annotations(spec),
        },
        "spec": {
            "replicas": spec.replicas,
            "serviceName": name,
            # All replicas start at once; an update still replaces one pod at a time, each index stopped before
            # its successor starts (what it had not acknowledged waits in its broker session).
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": selector_labels(spec, cluster)},
            "template": {
                "metadata": {
                    "labels": labels(spec, cluster),
                    "annotations": {f"{PREFIX}/name": spec.name, f"{PREFIX}/pod-hash": pod_hash(spec)},
                },
                "spec": pod_spec,
            },
        },
    }
