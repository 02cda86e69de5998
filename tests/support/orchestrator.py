"""Runs the real orchestrator (`python -m orchestrator serve`) on free loopback ports for a test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .waiting import wait_for

if TYPE_CHECKING:
    from .broker import ExternalBroker


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningOrchestrator:
    """One orchestrator process with its own data directory, API port and managed Mosquitto."""

    def __init__(self, data_dir: Path, *, device_url: str | None = None, **settings: str) -> None:
        """`device_url`: where devices connect when the broker is not the managed one."""
        self.data_dir = data_dir
        self.port = free_port()
        self.broker_port = free_port()
        self.websockets_port = free_port()
        self.device_url = device_url
        self.external_broker: ExternalBroker | None = None
        self.env = {
            **os.environ,
            **fresh_database(),
            "ORCH_DATA_DIR": str(data_dir),
            "ORCH_PORT": str(self.port),
            "ORCH_BROKER__URL": f"mqtt://127.0.0.1:{self.broker_port}",
            "ORCH_BROKER__WEBSOCKETS_PORT": str(self.websockets_port),
            "ORCH_RUNTIME__KIND": "process",
            "ORCH_RUNTIME__RECONCILE_INTERVAL_SECONDS": "1",
            "ORCH_RUNTIME__RESTART_BACKOFF_INITIAL_SECONDS": "0.5",
            "ORCH_RUNTIME__STOP_TIMEOUT_SECONDS": "10",
            **settings,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.api: httpx.Client | None = None
        self.token = ""

    @property
    def mqtt_url(self) -> str:
        """Where devices and tools connect."""
        return self.device_url or f"mqtt://127.0.0.1:{self.broker_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> RunningOrchestrator:
        """Start and wait until /healthz says the handler is connected."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "orchestrator.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

        def healthy() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"orchestrator exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout, what="the orchestrator to be healthy")
        self.token = self.env.get("ORCH_ADMIN_TOKEN") or (self.data_dir / "admin.token").read_text().strip()
        self.api = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        return self

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> int | None:
        """Stop gracefully (or with another signal); returns the exit code."""
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(5)

    def log_tail(self, lines: int = 60) -> str:
        text = (self.data_dir / "orchestrator.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def worker_logs(self) -> str:
        parts = []
        for path in sorted((self.data_dir / "process" / "logs").glob("*.log")):
            parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    # -- API shortcuts -------------------------------------------------------------------------

    def call(self, method: str, path: str, expect: int | None = None, **kwargs: Any) -> httpx.Response:
        assert self.api is not None
        response = self.api.request(method, path, **kwargs)
        if expect is not None:
            assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text}"
        return response

    def create_application(self, app_id: str) -> None:
        self.call("POST", "/api/v1/applications", 201, json={"id": app_id, "name": app_id})

    def create_device(self, app_id: str, device_id: str, **fields: Any) -> dict[str, Any]:
        body = {"device_id": device_id, **fields}
        return self.call("POST", f"/api/v1/applications/{app_id}/devices", 201, json=body).json()  # type: ignore[no-any-return]

    def create_key(self, app_id: str, *scopes: str) -> str:
        response = self.call("POST", f"/api/v1/applications/{app_id}/keys", 201, json={"scopes": list(scopes)})
        return str(response.json()["key"])

    def create_integration(self, app_id: str, **body: Any) -> dict[str, Any]:
        return self.call("POST", f"/api/v1/applications/{app_id}/integrations", 201, json=body).json()  # type: ignore[no-any-return]

    def integration(self, app_id: str, integration_id: str) -> dict[str, Any]:
        return self.call("GET", f"/api/v1/applications/{app_id}/integrations/{integration_id}", 200).json()  # type: ignore[no-any-return]

    def wait_state(self, app_id: str, integration_id: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            current = self.integration(app_id, integration_id)
            return current if current["status"]["actual"] == state else None

        return wait_for(check, timeout, what=f"{integration_id} to be {state}")

    def uplink(self, app_id: str, device_id: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"/api/v1/applications/{app_id}/devices/{device_id}/uplinks"
        return self.call("POST", path, 201, json=body).json()  # type: ignore[no-any-return]


def start_fails(data_dir: Path, mosquitto: str, **settings: str) -> str:
    """Run `orchestrator serve` expecting it to refuse to start (exit 2, no traceback); returns its one line."""
    env = {
        **os.environ,
        "ORCH_DATA_DIR": str(data_dir / "data"),
        "ORCH_PORT": str(free_port()),
        "ORCH_BROKER__URL": f"mqtt://127.0.0.1:{free_port()}",
        "ORCH_BROKER__WEBSOCKETS_PORT": str(free_port()),
        "ORCH_BROKER__MOSQUITTO_BINARY": mosquitto,
        "ORCH_RUNTIME__KIND": "process",
        **settings,
    }
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return next(line for line in result.stderr.splitlines() if line.startswith("cannot start"))


POSTGRES_ENV = "ORCH_TEST_POSTGRES_URL"  # set by the `both_databases` fixture while a test runs on PostgreSQL
created_databases: list[str] = []


def fresh_database() -> dict[str, str]:
    """ORCH_DATABASE_URL of a new, empty PostgreSQL database while a test runs on PostgreSQL; else nothing."""
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        return {}
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server.replace("+psycopg", ""), autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    created_databases.append(name)
    return {"ORCH_DATABASE_URL": server.rsplit("/", 1)[0] + f"/{name}"}


def drop_databases(server: str) -> None:
    """Drop the databases `fresh_database` made."""
    import psycopg

    with psycopg.connect(server.replace("+psycopg", ""), autocommit=True) as connection:
        while created_databases:
            connection.execute(f'DROP DATABASE IF EXISTS "{created_databases.pop()}" WITH (FORCE)')


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, OSError):
        return False
    return state != "Z"
