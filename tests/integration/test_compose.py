"""deploy/compose.yaml for real: the orchestrator's image, Mosquitto and PostgreSQL, then a webhook delivery.

It runs Debian's docker-compose (1.29) against the engine. Every test here uses host networking on loopback
(never a compose network's private-range addresses), so the test runs the file with exactly that changed:
`host_networked` drops the published ports and puts every service (and the workers) on the host network,
listening on 127.0.0.1. Images build from the local base when no registry answers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
import yaml
from cryptography.fernet import Fernet

from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import free_port
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

LOCAL_BASE = "iot-orchestrator/base:bookworm"
WEBHOOK_IMAGE = "iot-orchestrator/webhook:0.1.0"
APP = "compose-app"
COMPOSE_FILE = PROJECT_ROOT / "deploy" / "compose.yaml"
ON_LOOPBACK = {
    "mosquitto": {"MOSQUITTO_BIND_ADDRESS": "127.0.0.1"},
    "postgres": {"POSTGRES_LISTEN_ADDRESSES": "127.0.0.1"},
    "orchestrator": {"ORCH_HOST": "127.0.0.1", "ORCH_RUNTIME__DOCKER__NETWORK": "host"},
}


def host_networked(source: Path) -> dict[str, object]:
    """The compose file with host networking on loopback instead of published ports (and absolute build paths)."""
    document = yaml.safe_load(source.read_text())
    for name, service in document["services"].items():
        service.pop("ports", None)
        service["network_mode"] = "host"
        service["environment"] = {**service["environment"], **ON_LOOPBACK[name]}
        service["build"]["context"] = str((source.parent / service["build"]["context"]).resolve())
    return document  # type: ignore[no-any-return]


class Compose:
    """One compose project: `up`, API calls, `down` (volumes too)."""

    def __init__(self, directory: Path, engine: docker.DockerClient) -> None:
        binary = shutil.which("docker-compose")
        if binary is None:
            pytest.fail("docker-compose is not installed; ./scripts/test installs it (Debian's docker-compose)")
        self.binary = binary
        self.project = f"iotcompose{uuid.uuid4().hex[:8]}"
        self.token = secrets.token_urlsafe(16)
        self.api_port, self.mqtt_port, self.postgres_port = free_port(), free_port(), free_port()
        local = _has_image(engine, LOCAL_BASE)
        settings = {
            "ORCH_ADMIN_TOKEN": self.token,
            "ORCH_SECRET_KEY": Fernet.generate_key().decode(),
            "BROKER_ADMIN_PASSWORD": secrets.token_urlsafe(16),
            "POSTGRES_PASSWORD": "pw'with\"quotes " + secrets.token_urlsafe(8),  # any password works
            "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
            "API_PORT": str(self.api_port),
            "API_HOST": "127.0.0.1",
            "MQTT_PORT": str(self.mqtt_port),
            "MQTT_HOST": "127.0.0.1",
            "POSTGRES_PORT": str(self.postgres_port),
            "POSTGRES_HOST": "127.0.0.1",
            "WORKER_NETWORK": self.project,
            **({"DEBIAN_BASE_IMAGE": LOCAL_BASE, "PYTHON_BASE_IMAGE": LOCAL_BASE} if local else {}),
        }
        self.file = directory / "compose.yaml"
        self.file.write_text(yaml.safe_dump(host_networked(COMPOSE_FILE), sort_keys=False))
        self.env_file = directory / "compose.env"
        self.env_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        self.url = f"http://127.0.0.1:{self.api_port}"

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        command = [
            self.binary,
            "--project-name",
            self.project,
            "--file",
            str(self.file),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def call(self, method: str, path: str, expect: int, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        response = httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]
        assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response


def _has_image(engine: docker.DockerClient, name: str) -> bool:
    try:
        engine.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


@pytest.fixture
def compose(tmp_path: Path) -> Iterator[Compose]:
    try:
        engine = docker.from_env(timeout=60)
        engine.ping()
    except docker.errors.DockerException as err:
        pytest.fail(f"no Docker engine ({err}); ./scripts/test installs and starts one")
    if not _has_image(engine, WEBHOOK_IMAGE):
        pytest.fail(f"{WEBHOOK_IMAGE} is not built; run ./scripts/build-images --local-base")
    project = Compose(tmp_path, engine)
    try:
        yield project
    finally:
        logs = project.run("logs", "--no-color", "--tail", "60", timeout=120)
        print("\n==== compose logs ====\n" + logs.stdout[-6000:] + logs.stderr[-2000:])
        project.run("down", "--volumes", "--remove-orphans", timeout=300)
        # The workers the orchestrator started on the engine are not the compose project's: remove them too.
        for container in engine.containers.list(all=True, filters={"label": f"io.iot-orchestrator.application={APP}"}):
            container.remove(force=True)
        engine.close()


@pytest.mark.docker
def test_compose_up_gives_a_working_system(compose: Compose, sink: HttpSink) -> None:
    up = compose.run("up", "--detach", "--build")
    assert up.returncode == 0, up.stderr[-4000:]
    wait_for(lambda: _ready(compose.url), 180, what="the orchestrator in compose ready")
    health = httpx.get(compose.url + "/healthz", timeout=5).json()
    assert health["runtime"] == "docker" and health["broker"] == "connected"
    compose.call("POST", "/api/v1/applications", 201, json={"id": APP, "name": "Compose"})
    compose.call("POST", f"/api/v1/applications/{APP}/devices", 201, json={"device_id": "dev-1"})
    compose.call(
        "POST",
        f"/api/v1/applications/{APP}/integrations",
        201,
        json={"id": "hook", "template_id": "webhook", "config": {"url": sink.url}},
    )
    wait_for(
        lambda: (
            compose.call("GET", f"/api/v1/applications/{APP}/integrations/hook", 200).json()["status"]["actual"]
            == "running"
        ),
        120,
        what="the webhook worker running in its container",
    )
    compose.call("POST", f"/api/v1/applications/{APP}/devices/dev-1/uplinks", 201, json={"f_port": 1, "f_cnt": 7})
    wait_for(lambda: len(sink.accepted()) >= 1, 60, what="the uplink at the sink")
    assert sink.accepted()[0].json()["uplink_message"]["f_cnt"] == 7
    # The data lives in PostgreSQL: the orchestrator's container restarted keeps the integration.
    restart = compose.run("restart", "orchestrator", timeout=180)
    assert restart.returncode == 0, restart.stderr[-2000:]
    wait_for(lambda: _ready(compose.url), 120, what="ready again after a restart")
    assert compose.call("GET", f"/api/v1/applications/{APP}/integrations/hook", 200).json()["id"] == "hook"


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False
