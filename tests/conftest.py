"""Shared fixtures: real Mosquitto (via the orchestrator), a real HTTP sink, and failure diagnostics."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.orchestrator import RunningOrchestrator
from tests.support.pubsub import PubSubEmulator, find_launcher
from tests.support.sink import HttpSink


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


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    server = HttpSink()
    yield server
    server.close()


def _start(tmp: Path, binary: str, **settings: str) -> RunningOrchestrator:
    return RunningOrchestrator(tmp, ORCH_BROKER__MOSQUITTO_BINARY=binary, **settings).start()


@pytest.fixture
def orchestrator(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: str) -> Iterator[RunningOrchestrator]:
    """A fresh orchestrator for one test; its logs and worker logs are printed if the test fails."""
    running = _start(tmp_path / "orchestrator", mosquitto)
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
