"""The Kubernetes builders as plain data, and against the official schemas of several Kubernetes versions."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from orchestrator.runtime.base import WorkerSpec
from orchestrator.runtime.kubernetes_objects import (
    make_secret,
    make_statefulset,
    pod_hash,
    shorten,
    workload_name,
)

# The oldest and newest minor versions the schemas package carries that the builders target (1.28 brought the
# pod-index label the workers read their replica from).
VERSIONS = ["1.30.0", "1.37.0"]
SECRET_VALUE = "ik.abc.very-secret-key"


def spec(**changes: object) -> WorkerSpec:
    values: dict[str, object] = {
        "name": "greenhouse--to-echo",
        "application_id": "greenhouse",
        "integration_id": "to-echo",
        "template_id": "webhook",
        "template_version": "1.2.0",
        "image": "iot-orchestrator/webhook:0.1.0",
        "python_module": None,
        "environment": {"WEBHOOK_URL": "http://example.test/", "HANDLER_API_KEY": SECRET_VALUE},
        "secret_env": ("HANDLER_API_KEY",),
        "replicas": 2,
        "memory_mb": 96,
        "cpus": 0.25,
    }
    values.update(changes)
    return WorkerSpec(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_objects_pass_the_official_schemas(version: str) -> None:
    for obj in (make_statefulset(spec(), "iot", "cluster-1"), make_secret(spec(), "iot", "cluster-1")):
        kubernetes_validate.validate(obj, version, strict=True)


def test_secret_values_live_only_in_the_secret_and_pods_reference_them() -> None:
    workload = make_statefulset(spec(), "iot", "cluster-1")
    assert SECRET_VALUE not in json.dumps(workload)
    env = {item["name"]: item for item in workload["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HANDLER_API_KEY"] == {
        "name": "HANDLER_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "iot-greenhouse--to-echo", "key": "HANDLER_API_KEY"}},
    }
    assert env["WEBHOOK_URL"]["value"] == "http://example.test/"
    # The replica index is the pod's ordinal, from the label the StatefulSet controller sets.
    assert (
        env["WORKER_REPLICA"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    )
    secret = make_secret(spec(), "iot", "cluster-1")
    assert secret["stringData"] == {"HANDLER_API_KEY": SECRET_VALUE}
    assert SECRET_VALUE not in json.dumps(secret["metadata"])


def test_the_pods_are_hardened_and_limited() -> None:
    pod = make_statefulset(spec(), "iot", "cluster-1")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {"requests": {"memory": "96Mi", "cpu": "250m"}, "limits": {"memory": "96Mi"}}
    # The image's health check is the probe.
    assert container["livenessProbe"]["exec"]["command"] == ["python3", "-m", "worker_sdk.healthcheck"]
    assert container["readinessProbe"]["exec"]["command"] == ["python3", "-m", "worker_sdk.healthcheck"]


def test_long_ids_are_shortened_deterministically_and_kept_whole_in_annotations() -> None:
    long_app, long_integration = "a" * 36, "b" * 36
    long = spec(name=f"{long_app}--{long_integration}", application_id=long_app, integration_id=long_integration)
    workload = make_statefulset(long, "iot", "c" * 80)
    name = workload["metadata"]["name"]
    assert (
        len(name) <= 52
        and name == workload_name(long.name) == make_statefulset(long, "iot", "c" * 80)["metadata"]["name"]
    )
    assert name != workload_name(f"{long_app}--{'b' * 35}c")  # another integration, another name
    assert all(len(value) <= 63 for value in workload["metadata"]["labels"].values())
    assert workload["metadata"]["annotations"]["iot-orchestrator.io/name"] == long.name
    assert workload["metadata"]["annotations"]["iot-orchestrator.io/integration-id"] == long_integration
    for version in VERSIONS:
        kubernetes_validate.validate(workload, version, strict=True)
    assert shorten("x" * 10, 63) == "x" * 10


def test_scaling_keeps_the_pods_and_a_new_configuration_replaces_them() -> None:
    assert pod_hash(spec(replicas=1)) == pod_hash(spec(replicas=5))
    assert spec(replicas=1).config_hash != spec(replicas=5).config_hash  # the reconciler still sees the change
    assert pod_hash(spec()) != pod_hash(spec(environment={"WEBHOOK_URL": "http://other.test/"}))
    assert pod_hash(spec()) != pod_hash(spec(memory_mb=256))
