"""Shared fixtures: real Mosquitto (via the orchestrator), a real HTTP sink, and failure diagnostics."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.broker import ExternalBroker
from tests.support.iothub import HUB_HOST, POLICY, HubBroker, RegistryContractDouble, TwinResponder
from tests.support.orchestrator import POSTGRES_ENV, RunningOrchestrator, drop_databases
from tests.support.pubsub import PubSubEmulator, find_launcher
from tests.support.sink import HttpSink
from tests.support.tls import make_certificates


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def mosquitto() -> str:
    """The Mosquitto binary. Missing is a failure, never a skip: scripts/test installs it."""
    binary = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        pytest.fail("Mosquitto is not installed; run ./scripts/test, which installs it")
    return binary


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A PostgreSQL server on loopback (scripts/start-postgres installs and starts it). Missing is a failure."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "start-postgres"
    result = subprocess.run([str(script)], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"PostgreSQL could not be started: {result.stderr[-2000:]}")
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(params=["sqlite", "postgres"])
def both_databases(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Runs a test once on SQLite and once on PostgreSQL (each orchestrator it starts gets a new database)."""
    if request.param == "sqlite":
        yield "sqlite"
        return
    server = request.getfixturevalue("postgres_server")
    monkeypatch.setenv(POSTGRES_ENV, server)
    yield "postgres"
    drop_databases(server)


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    server = HttpSink()
    yield server
    server.close()


def _start(tmp: Path, binary: str, device_url: str | None = None, **settings: str) -> RunningOrchestrator:
    return RunningOrchestrator(tmp, device_url=device_url, ORCH_BROKER__MOSQUITTO_BINARY=binary, **settings).start()


@pytest.fixture
def orchestrator(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: str) -> Iterator[RunningOrchestrator]:
    """A fresh orchestrator for one test; its logs and worker logs are printed if the test fails.

    Parametrized indirectly with "external", it uses a separately started Mosquitto (deploy/mosquitto) over TLS.
    """
    broker = None
    if getattr(request, "param", "managed") == "external":
        broker = ExternalBroker(tmp_path / "external-broker", mosquitto).start()
        request.addfinalizer(broker.stop)
        settings = broker.orchestrator_settings()
        running = _start(tmp_path / "orchestrator", mosquitto, device_url=broker.plain_url, **settings)
    else:
        running = _start(tmp_path / "orchestrator", mosquitto)
    running.external_broker = broker
    yield running
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        print("\n==== orchestrator log ====\n" + running.log_tail(80))
        print("\n==== worker logs ====\n" + running.worker_logs())
    running.stop()


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PubSubEmulator]:
    """Google's Pub/Sub emulator. Missing is a failure: it is part of these machines (ENVIRONMENT.md)."""
    launcher = find_launcher()
    if launcher is None:
        pytest.fail("the Pub/Sub emulator (Debian package google-cloud-cli-pubsub-emulator) is not installed")
    emulator = PubSubEmulator(launcher, tmp_path_factory.mktemp("pubsub"))
    yield emulator
    emulator.stop()


@dataclass
class IotHub:
    """The IoT Hub stand-ins: TLS Mosquitto on 8883, the registry contract double, the twin responder."""

    ca: Path
    registry: RegistryContractDouble
    twins: TwinResponder
    policy_key: str

    def integration_config(self, **extra: object) -> dict[str, object]:
        """Field values for the azure-iot-hub template pointing at these stand-ins."""
        return {
            "hub_hostname": HUB_HOST,
            "policy_name": POLICY,
            "policy_key": self.policy_key,
            "registry_url": self.registry.url,
            "ca_pem": self.ca.read_text(),
            **extra,
        }


@pytest.fixture(scope="session")
def iothub(tmp_path_factory: pytest.TempPathFactory, mosquitto: str) -> Iterator[IotHub]:
    """IoT Hub for tests: no emulator exists, so a real TLS broker plus named contract doubles."""
    directory = tmp_path_factory.mktemp("iothub")
    ca, cert, key = make_certificates(directory)
    broker = HubBroker(mosquitto, directory, ca, cert, key)
    policy_key = base64.b64encode(os.urandom(32)).decode()
    registry = RegistryContractDouble(policy_key, cert, key)
    twins = TwinResponder(ca, registry)
    yield IotHub(ca, registry, twins, policy_key)
    twins.stop()
    registry.stop()
    broker.stop()
