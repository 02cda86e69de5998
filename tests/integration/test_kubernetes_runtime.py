"""The Kubernetes runtime with the real `kubernetes` client against a contract double of the API server.

No API server can run on these machines (tests/support/kubeapi.py says what the double does and does not).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator.config import Settings
from orchestrator.errors import RuntimeFailure
from orchestrator.runtime.base import WorkerSpec, WorkerState
from orchestrator.runtime.kubernetes import KubernetesRuntime
from orchestrator.runtime.kubernetes_objects import workload_name
from tests.support.kubeapi import KubernetesApiDouble
from tests.support.orchestrator import RunningOrchestrator, start_fails
from tests.support.waiting import wait_for

SECRET = "ik.abc.secret-value"
IMAGE = "iot-orchestrator/webhook:0.1.0"


@pytest.fixture
def api() -> Iterator[KubernetesApiDouble]:
    double = KubernetesApiDouble(namespaces=("iot",)).start()
    yield double
    double.stop()


def runtime_for(
    api: KubernetesApiDouble, tmp_path: Path, namespace: str = "iot", cluster: str = "c1"
) -> KubernetesRuntime:
    settings = Settings(
        runtime={
            "kind": "kubernetes",
            "stop_timeout_seconds": 2,
            "kubernetes": {"kubeconfig": api.kubeconfig(tmp_path / "kubeconfig", namespace)},
        },  # type: ignore[arg-type]
    )
    return KubernetesRuntime(settings, allowed_images=lambda: {IMAGE}, cluster=cluster)


def spec(replicas: int = 1, url: str = "http://127.0.0.1:9000/", name: str = "app--hook") -> WorkerSpec:
    app, integration = name.split("--")
    return WorkerSpec(
        name=name,
        application_id=app,
        integration_id=integration,
        template_id="webhook",
        template_version="1.0.0",
        image=IMAGE,
        python_module=None,
        environment={"WEBHOOK_URL": url, "HANDLER_API_KEY": SECRET},
        secret_env=("HANDLER_API_KEY",),
        replicas=replicas,
    )


async def wait_state(runtime: KubernetesRuntime, name: str, state: WorkerState, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while (await runtime.status(name)).state != state:
            await asyncio.sleep(0.05)


async def test_start_runs_a_statefulset_with_its_secret_and_reports_running(
    api: KubernetesApiDouble, tmp_path: Path
) -> None:
    runtime = runtime_for(api, tmp_path)
    await runtime.check()
    handle = await runtime.start(spec(replicas=2))
    assert handle == {"statefulset": "iot-app--hook", "namespace": "iot"}
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    status = await runtime.status("app--hook")
    assert status.config_hash == spec(replicas=2).config_hash and status.replicas == 2
    assert status.handle["pods"] == ["iot-app--hook-0", "iot-app--hook-1"]
    secret = api.items("secrets", "iot")["iot-app--hook"]
    assert base64.b64decode(secret["data"]["HANDLER_API_KEY"]).decode() == SECRET
    assert SECRET not in str(api.items("statefulsets", "iot"))  # referenced, never inlined
    await runtime.close()


async def test_scaling_changes_replicas_in_place_and_a_new_configuration_rolls(
    api: KubernetesApiDouble, tmp_path: Path
) -> None:
    runtime = runtime_for(api, tmp_path)
    await runtime.start(spec(replicas=1))
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    first = api.pods_of("iot-app--hook", "iot")["iot-app--hook-0"]["metadata"]["uid"]
    await runtime.start(spec(replicas=3))
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    pods = api.pods_of("iot-app--hook", "iot")
    assert sorted(pods) == ["iot-app--hook-0", "iot-app--hook-1", "iot-app--hook-2"]
    assert pods["iot-app--hook-0"]["metadata"]["uid"] == first  # scaled: the running pod stayed
    await runtime.start(spec(replicas=3, url="http://127.0.0.1:9001/"))
    api.wait(
        lambda: (
            all(
                env.get("value") == "http://127.0.0.1:9001/"
                for pod in api.pods_of("iot-app--hook", "iot").values()
                for env in pod["spec"]["containers"][0]["env"]
                if env["name"] == "WEBHOOK_URL"
            )
            and len(api.pods_of("iot-app--hook", "iot")) == 3
        )
    )
    assert (await runtime.status("app--hook")).config_hash == spec(replicas=3, url="http://127.0.0.1:9001/").config_hash
    await runtime.start(spec(replicas=1, url="http://127.0.0.1:9001/"))
    api.wait(lambda: sorted(api.pods_of("iot-app--hook", "iot")) == ["iot-app--hook-0"])
    await runtime.close()


async def test_stop_waits_until_the_pods_are_gone_and_stopping_twice_is_fine(
    api: KubernetesApiDouble, tmp_path: Path
) -> None:
    runtime = runtime_for(api, tmp_path)
    api.deletion_delay = 1.0
    await runtime.start(spec())
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    await runtime.stop("app--hook")
    assert api.items("statefulsets", "iot") == {} and api.pods_of("iot-app--hook", "iot") == {}
    assert api.items("secrets", "iot") == {}
    assert (await runtime.status("app--hook")).state == WorkerState.MISSING
    await runtime.stop("app--hook")  # nothing there: success
    # Started again while a deletion is still under way (409 AlreadyExists): it waits, then creates.
    await runtime.start(spec())
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    delete = asyncio.create_task(runtime.stop("app--hook"))
    await asyncio.sleep(0.2)
    await runtime.start(spec())
    await delete
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    await runtime.close()


async def test_a_restarted_orchestrator_adopts_its_cluster_s_workers_only(
    api: KubernetesApiDouble, tmp_path: Path
) -> None:
    first = runtime_for(api, tmp_path)
    await first.start(spec(name="app--one"))
    await first.start(spec(name="app--two", replicas=2))
    other = runtime_for(api, tmp_path, cluster="another-cluster")
    await other.start(spec(name="app--theirs"))
    await first.close()
    again = runtime_for(api, tmp_path)
    api.wait(lambda: len(api.items("pods", "iot")) == 4)
    found = await again.list_workers()
    assert sorted(found) == ["app--one", "app--two"]
    assert (
        found["app--two"].replicas == 2
        and found["app--two"].config_hash == spec(name="app--two", replicas=2).config_hash
    )
    await again.close()
    await other.close()


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        (
            {
                "restartCount": 4,
                "state": {
                    "waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}
                },
                "lastState": {
                    "terminated": {
                        "exitCode": 3,
                        "reason": "Error",
                        "message": "WEBHOOK_URL is not a URL",
                        "finishedAt": "2026-12-06T10:00:00Z",
                    }
                },
            },
            "keeps crashing (exit code 3): WEBHOOK_URL is not a URL",
        ),
        (
            {"state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}}},
            f"cannot pull image {IMAGE} (ImagePullBackOff)",
        ),
        (
            {
                "restartCount": 1,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {
                    "terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-12-06T10:00:00Z"}
                },
            },
            "out of memory",
        ),
        (
            {"unschedulable": "0/3 nodes are available: 3 Insufficient memory."},
            "cannot be scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient memory.",
        ),
    ],
)
async def test_failures_are_named_for_a_person(
    api: KubernetesApiDouble, tmp_path: Path, container: dict[str, object], expected: str
) -> None:
    runtime = runtime_for(api, tmp_path)
    api.container_states["iot-app--hook"] = container
    await runtime.start(spec())
    await wait_state(runtime, "app--hook", WorkerState.FAILED)
    status = await runtime.status("app--hook")
    assert expected in status.message, status.message
    # Starting again (the reconciler's restart after its back-off) makes the failing pods anew.
    before = api.pods_of("iot-app--hook", "iot")["iot-app--hook-0"]["metadata"]["uid"]
    await runtime.start(spec())
    api.wait(
        lambda: (
            api.pods_of("iot-app--hook", "iot").get("iot-app--hook-0", {}).get("metadata", {}).get("uid")
            not in (None, before)
        )
    )
    await runtime.close()


async def test_logs_come_from_each_replica_s_pod(api: KubernetesApiDouble, tmp_path: Path) -> None:
    runtime = runtime_for(api, tmp_path)
    await runtime.start(spec(replicas=2))
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    api.logs["iot-app--hook-0"] = ["zero a", "zero b"]
    api.logs["iot-app--hook-1"] = ["one a"]
    assert await runtime.logs("app--hook", tail=1) == ["[1] one a"]
    assert await runtime.logs("app--hook") == ["[0] zero a", "[0] zero b", "[1] one a"]
    follow = runtime.follow("app--hook")
    reader = asyncio.create_task(anext(follow))
    await asyncio.sleep(0.3)
    api.logs["iot-app--hook-1"].append("one b")
    assert await asyncio.wait_for(reader, 5) == "one b"
    await follow.aclose()
    await runtime.close()


async def test_refusals_and_an_unreachable_api_are_clear_and_delete_nothing(
    api: KubernetesApiDouble, tmp_path: Path
) -> None:
    missing = runtime_for(api, tmp_path, namespace="nowhere")
    with pytest.raises(RuntimeFailure, match="namespace nowhere does not exist"):
        await missing.check()
    runtime = runtime_for(api, tmp_path)
    await runtime.start(spec())
    api.forbidden.add(("update", "apps/statefulsets"))
    with pytest.raises(RuntimeFailure, match='cannot update resource "statefulsets"'):
        await runtime.start(spec(url="http://127.0.0.1:9002/"))
    api.stop()
    with pytest.raises(RuntimeFailure, match="cannot be reached"):
        await runtime.status("app--hook")
    await runtime.close()


def test_a_name_too_long_for_kubernetes_is_shortened_not_refused() -> None:
    assert len(workload_name(f"{'a' * 36}--{'b' * 36}")) <= 52


async def test_the_chart_s_role_grants_exactly_the_requests_the_runtime_makes(
    api: KubernetesApiDouble, tmp_path: Path
) -> None:
    from tests.pure.test_chart import one, render_ci

    # Every call the runtime has, once: check, start (create, update, restart failing pods), status, adoption,
    # logs (tail and follow), stop.
    runtime = runtime_for(api, tmp_path)
    await runtime.check()
    await runtime.start(spec())
    await wait_state(runtime, "app--hook", WorkerState.RUNNING)
    await runtime.start(spec(replicas=2))
    api.container_states["iot-app--hook"] = {"state": {"waiting": {"reason": "ErrImagePull"}}}
    await wait_state(runtime, "app--hook", WorkerState.FAILED)
    await runtime.start(spec(replicas=2))
    await runtime.list_workers()
    await runtime.logs("app--hook")
    follow = runtime.follow("app--hook")
    reader = asyncio.create_task(anext(follow))
    await asyncio.sleep(0.3)
    api.logs["iot-app--hook-0"] = ["a line"]
    await asyncio.wait_for(reader, 5)
    await follow.aclose()
    await runtime.stop("app--hook")
    await runtime.close()

    used = {(verb, resource) for verb, resource in api.requests}
    role = one(render_ci("default-values.yaml"), "Role")
    granted = {
        (verb, f"{group}/{resource}" if group else resource)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert used == granted, f"used but not granted: {used - granted}; granted but unused: {granted - used}"


def test_an_orchestrator_on_kubernetes_runs_integrations_as_statefulsets(tmp_path: Path, mosquitto: str) -> None:
    api = KubernetesApiDouble(namespaces=("iot",)).start()
    settings = {
        "ORCH_BROKER__MOSQUITTO_BINARY": mosquitto,
        "ORCH_RUNTIME__KIND": "kubernetes",
        "ORCH_RUNTIME__KUBERNETES__KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig", "iot")),
    }
    orch = RunningOrchestrator(tmp_path / "orchestrator", **settings).start()
    try:
        assert httpx.get(f"{orch.url}/healthz").json()["runtime"] == "kubernetes"
        orch.create_application("kube-app")
        orch.create_integration("kube-app", id="hook", template_id="webhook", config={"url": "http://127.0.0.1:9/"})
        wait_for(lambda: "iot-kube-app--hook" in api.items("statefulsets", "iot"), 20, what="the StatefulSet")
        path = "/api/v1/applications/kube-app/integrations/hook"
        wait_for(
            lambda: orch.call("GET", path, 200).json()["status"]["handle"] is not None, 20, what="the handle recorded"
        )
        assert orch.call("GET", path, 200).json()["status"]["runtime"] == "kubernetes"
        secret = api.items("secrets", "iot")["iot-kube-app--hook"]
        assert set(secret["data"]) == {"HANDLER_API_KEY"}  # the worker's key, referenced from the pods

        # The API server goes away: the integration says so, and nothing is deleted meanwhile.
        api.stop()
        wait_for(
            lambda: "cannot be reached" in (orch.call("GET", path, 200).json()["status"]["last_error"] or ""),
            30,
            what="the unreachable API server named on the integration",
        )
        assert "cannot be reached" in httpx.get(f"{orch.url}/healthz").json()["runtime_error"]
        assert ("delete", "apps/statefulsets") not in api.requests
    finally:
        orch.stop()
        api.stop()


def test_a_kubernetes_namespace_that_does_not_exist_stops_the_start(tmp_path: Path, mosquitto: str) -> None:
    api = KubernetesApiDouble(namespaces=("iot",)).start()
    try:
        line = start_fails(
            tmp_path,
            mosquitto,
            ORCH_RUNTIME__KIND="kubernetes",
            ORCH_RUNTIME__KUBERNETES__KUBECONFIG=str(api.kubeconfig(tmp_path / "kubeconfig", "nowhere")),
        )
        assert line == "cannot start: ORCH_RUNTIME__KUBERNETES__NAMESPACE: namespace nowhere does not exist"
    finally:
        api.stop()
