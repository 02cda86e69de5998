"""The Docker runtime end to end: real engine, real containers from the images built by scripts/build-images."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink, ok_json
from tests.support.waiting import wait_for

APP = "dock-app"
WEBHOOK_IMAGE = "iot-orchestrator/webhook:0.1.0"
LABEL = "io.iot-orchestrator"


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """The Docker engine with the webhook image. Missing is a failure: scripts/test installs and builds both."""
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as err:
        pytest.fail(f"no Docker engine ({err}); ./scripts/test installs and starts one")
    try:
        client.images.get(WEBHOOK_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{WEBHOOK_IMAGE} is not built; run ./scripts/build-images --local-base")
    yield client
    client.close()


def docker_orchestrator(tmp: Path, mosquitto: str, **settings: str) -> RunningOrchestrator:
    return RunningOrchestrator(
        tmp,
        ORCH_BROKER__MOSQUITTO_BINARY=mosquitto,
        ORCH_RUNTIME__KIND="docker",
        ORCH_RUNTIME__DOCKER__NETWORK="host",
        **settings,
    )


@pytest.fixture
def dorch(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: str, engine: docker.DockerClient
) -> Iterator[RunningOrchestrator]:
    running = docker_orchestrator(tmp_path / "o", mosquitto).start()
    yield running
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print("\n==== orchestrator log ====\n" + running.log_tail(80))
        for container in containers(engine, running):
            print(f"\n==== {container.name} ====\n" + container.logs(tail=40).decode(errors="replace"))
    running.stop()  # first, or its reconciler would start what we remove
    remove_all(engine, running)


def instance_of(orch: RunningOrchestrator) -> str:
    return (orch.data_dir / "instance.id").read_text().strip()


def containers(engine: docker.DockerClient, orch: RunningOrchestrator, **labels: str) -> list[Any]:
    filters = [f"{LABEL}.instance={instance_of(orch)}"] + [f"{LABEL}.{k}={v}" for k, v in labels.items()]
    while True:
        try:
            return list(engine.containers.list(all=True, filters={"label": filters}))
        except docker.errors.NotFound:
            continue  # the SDK inspects each container it lists: one was removed in between, list again


def remove_all(engine: docker.DockerClient, orch: RunningOrchestrator) -> None:
    for container in containers(engine, orch):
        container.remove(force=True)


def setup_app(orch: RunningOrchestrator) -> None:
    orch.create_application(APP)
    orch.create_device(APP, "dev-1")


def test_webhook_in_a_hardened_container(
    dorch: RunningOrchestrator, engine: docker.DockerClient, sink: HttpSink
) -> None:
    setup_app(dorch)
    sink.responder = ok_json({"ack": 1})
    created = dorch.create_integration(
        APP,
        id="hook",
        template_id="webhook",
        config={
            "url": sink.url + "/{{device_id}}",
            "auth_token": "very-secret-token",
            "response_template": '{"f_port": 2, "decoded_payload": {"ack": "{{response.json.ack}}"}}',
        },
    )
    assert created["status"]["runtime"] == "docker"
    dorch.wait_state(APP, "hook", "running", timeout=60)
    dorch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"t": 1}})
    request = wait_for(sink.accepted, what="the request from the container")[0]
    assert request.path == "/dev-1" and request.headers["authorization"] == "Bearer very-secret-token"
    queued = wait_for(
        lambda: dorch.call("GET", f"/api/v1/applications/{APP}/devices/dev-1/downlinks").json()["downlinks"],
        what="the downlink from the response",
    )
    assert queued[0]["decoded_payload"] == {"ack": "1"}

    (container,) = containers(engine, dorch, integration="hook")
    attrs = container.attrs
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == "65532:65532"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Memory"] == 96 * 1024 * 1024 and (host["CpuQuota"], host["CpuPeriod"]) == (500_000, 1_000_000)
    assert host["RestartPolicy"]["Name"] == "unless-stopped"
    assert not any("docker.sock" in mount.get("Source", "") for mount in attrs["Mounts"])
    labels = attrs["Config"]["Labels"]
    assert labels[f"{LABEL}.integration"] == "hook" and labels[f"{LABEL}.template"] == "webhook"
    assert "very-secret-token" not in json.dumps(labels)
    assert container.name.startswith("iot-dock-app--hook-0-")
    logs = dorch.call("GET", f"/api/v1/applications/{APP}/integrations/hook/logs", 200).json()["lines"]
    assert any("integration hook running" in line for line in logs)


def test_killed_container_is_restarted_and_loses_nothing(
    dorch: RunningOrchestrator, engine: docker.DockerClient, sink: HttpSink
) -> None:
    setup_app(dorch)
    dorch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    dorch.wait_state(APP, "hook", "running", timeout=60)
    (container,) = containers(engine, dorch, integration="hook")
    container.kill()
    for count in range(5):
        dorch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})
    received = wait_for(
        lambda: len(sink.accepted()) >= 5 and sink.accepted(),
        timeout=60,
        what="the uplinks sent while the container was dead",
    )
    assert sorted(r.json()["uplink_message"]["decoded_payload"]["n"] for r in received) == list(range(5))
    status = dorch.wait_state(APP, "hook", "running", timeout=60)["status"]
    assert status["restart_count"] >= 1


def test_orchestrator_restart_adopts_containers(
    tmp_path: Path, mosquitto: str, engine: docker.DockerClient, sink: HttpSink
) -> None:
    orch = docker_orchestrator(tmp_path / "o", mosquitto).start()
    try:
        setup_app(orch)
        orch.create_integration(APP, id="keep", template_id="webhook", config={"url": sink.url + "/keep"})
        orch.create_integration(APP, id="drop", template_id="webhook", config={"url": sink.url + "/drop"})
        orch.wait_state(APP, "keep", "running", timeout=60)
        before = {c.name: c.id for c in containers(engine, orch)}
        assert len(before) == 2

        orch.stop()  # graceful: containers keep running
        assert {c.name for c in containers(engine, orch) if c.status == "running"} == set(before)
        # While it is down, an integration disappears behind its back (as after a restore).
        orch.start()
        orch.wait_state(APP, "keep", "running", timeout=60)
        after = {c.name: c.id for c in containers(engine, orch)}
        assert after == before  # adopted: same containers, nothing started twice
        orch.call("DELETE", f"/api/v1/applications/{APP}/integrations/drop", 204)
        assert [c.name for c in containers(engine, orch)] == [n for n in before if "--keep-" in n]

        orch.uplink(APP, "dev-1", {"f_port": 1})
        assert wait_for(sink.accepted)[0].path == "/keep"
    finally:
        orch.stop()  # first, or its reconciler would start what we remove
        remove_all(engine, orch)


def test_orphan_containers_are_removed_at_start(
    tmp_path: Path, mosquitto: str, engine: docker.DockerClient, sink: HttpSink
) -> None:
    orch = docker_orchestrator(tmp_path / "o", mosquitto).start()
    try:
        setup_app(orch)
        orch.create_integration(APP, id="gone", template_id="webhook", config={"url": sink.url})
        orch.wait_state(APP, "gone", "running", timeout=60)
        orch.stop(signal.SIGKILL)
        # The record disappears while the orchestrator is down (say, a database restored from backup).
        import sqlite3

        with sqlite3.connect(tmp_path / "o" / "orchestrator.db") as db:
            db.execute("DELETE FROM integrations WHERE id = 'gone'")
        orch.start()
        wait_for(lambda: not containers(engine, orch), timeout=30, what="the orphan container to go")
    finally:
        orch.stop()  # first, or its reconciler would start what we remove
        remove_all(engine, orch)


def test_config_change_replaces_the_container(
    dorch: RunningOrchestrator, engine: docker.DockerClient, sink: HttpSink
) -> None:
    setup_app(dorch)
    dorch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/old"})
    dorch.wait_state(APP, "hook", "running", timeout=60)
    (old,) = containers(engine, dorch, integration="hook")
    dorch.call(
        "PATCH", f"/api/v1/applications/{APP}/integrations/hook", 200, json={"config": {"url": sink.url + "/new"}}
    )
    (new,) = containers(engine, dorch, integration="hook")
    assert new.id != old.id
    assert "WEBHOOK_URL=" + sink.url + "/new" in new.attrs["Config"]["Env"]
    dorch.wait_state(APP, "hook", "running", timeout=60)
    dorch.uplink(APP, "dev-1", {"f_port": 1})
    assert wait_for(sink.accepted)[0].path == "/new"


def test_missing_image_is_a_clear_error(tmp_path: Path, mosquitto: str, engine: docker.DockerClient) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "integration_templates", templates)
    text = (templates / "webhook.yaml").read_text()
    text = text.replace("id: webhook", "id: phantom").replace(
        "repository: iot-orchestrator/webhook", "repository: iot-orchestrator/phantom"
    )
    (templates / "phantom.yaml").write_text(text)
    orch = docker_orchestrator(tmp_path / "o", mosquitto, ORCH_TEMPLATES_DIR=str(templates)).start()
    try:
        setup_app(orch)
        created = orch.create_integration(APP, id="ghost", template_id="phantom", config={"url": "http://127.0.0.1:9"})
        assert created["status"]["actual"] == "failed"
        error = created["status"]["last_error"]
        assert "iot-orchestrator/phantom:0.1.0" in error and "scripts/build-images" in error
        assert orch.call("GET", "/healthz", 200).json()["status"] == "ok"  # the service is unaffected
        orch.create_integration(APP, id="fine", template_id="webhook", config={"url": "http://127.0.0.1:9"})
        orch.wait_state(APP, "fine", "running", timeout=60)
    finally:
        orch.stop()  # first, or its reconciler would start what we remove
        remove_all(engine, orch)


def test_concurrent_stops_return_only_when_the_container_is_gone(tmp_path: Path, engine: docker.DockerClient) -> None:
    # The API's delete and the reconciler's orphan sweep can remove one container at the same moment;
    # a removal that meets Docker's 409 (already in progress) must still not return while it exists.
    import asyncio

    from orchestrator.config import Settings
    from orchestrator.runtime.docker import DockerRuntime

    runtime = DockerRuntime(Settings(data_dir=tmp_path, runtime={"stop_timeout_seconds": 1}), client=engine)
    name = "race-app--race"
    labels = {f"{LABEL}.managed": "true", f"{LABEL}.cluster": runtime.cluster, f"{LABEL}.name": name}

    def left() -> list[Any]:
        return list(engine.containers.list(all=True, filters={"label": f"{LABEL}.name={name}"}))

    async def stop_together() -> list[list[Any]]:
        """Stop from four callers at once; what was left each time one of them returned."""
        seen = []
        for stop in asyncio.as_completed([runtime.stop(name) for _ in range(4)]):
            await stop
            seen.append(await asyncio.to_thread(left))
        return seen

    try:
        for _ in range(5):
            # PID 1 ignores SIGTERM: every stop waits the timeout, then they all remove at once.
            engine.containers.run(
                WEBHOOK_IMAGE,
                ["python", "-c", "import time; time.sleep(600)"],
                entrypoint=[],
                name=name,
                labels=labels,
                detach=True,
                network_mode="none",
            )
            assert asyncio.run(stop_together()) == [[], [], [], []]
    finally:
        for container in left():
            container.remove(force=True)
