"""Worker lifecycle against the real orchestrator: adoption after a crash, bad configuration, device sync, logs."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import RunningOrchestrator, free_port, pid_alive
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "life-app"
pytestmark = pytest.mark.usefixtures("both_databases")  # every test on SQLite and on PostgreSQL


def test_orchestrator_crash_and_restart_adopts_running_workers(tmp_path: Path, mosquitto: str, sink: HttpSink) -> None:
    orch = RunningOrchestrator(tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto).start()
    try:
        orch.create_application(APP)
        orch.create_device(APP, "dev-1")
        orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
        pid = orch.wait_state(APP, "hook", "running")["status"]["handle"]["pids"][0]

        orch.stop(signal.SIGKILL)  # no clean-up at all
        assert pid_alive(pid)
        orch.start()

        status = orch.wait_state(APP, "hook", "running")["status"]
        assert status["handle"]["pids"] == [pid]  # adopted, not started twice
        assert status["restart_count"] == 0
        workers = list((tmp_path / "o" / "process" / "run").glob("*.json"))
        assert len(workers) == 1
        orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"after": "restart"}})
        assert wait_for(sink.accepted)[0].json()["uplink_message"]["decoded_payload"] == {"after": "restart"}
        # The worker was connected all along: the orchestrator did not take over its broker session.
        worker_log = (tmp_path / "o" / "process" / "logs" / f"{APP}--hook.0.log").read_text()
        assert "lost the MQTT broker connection" not in worker_log
        assert "made the subscriptions" not in orch.log_tail(200)
    finally:
        orch.stop()
    assert not pid_alive(pid)  # a graceful stop takes the process workers with it


def test_bad_worker_configuration_becomes_a_clear_error(tmp_path: Path, mosquitto: str) -> None:
    # The webhook template runs the image's own check: the broken body never reaches a worker.
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "integration_templates", templates)
    unchecked = (templates / "webhook.yaml").read_text().replace("check: webhook_worker.check:check_environment", "")
    (templates / "unchecked-webhook.yaml").write_text(unchecked.replace("id: webhook", "id: unchecked-webhook", 1))
    orch = RunningOrchestrator(
        tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_TEMPLATES_DIR=str(templates)
    ).start()
    try:
        orch.create_application(APP)
        broken = {"url": "http://127.0.0.1:9/x", "body_format": "json", "body": '{"broken": '}
        refused = orch.call(
            "POST",
            f"/api/v1/applications/{APP}/integrations",
            422,
            json={"id": "hook", "template_id": "webhook", "config": broken},
        ).json()
        assert refused["errors"][0]["field"] == "config.body"
        assert "not valid JSON" in refused["errors"][0]["message"]

        # A maintainer's template without a check: the worker's own refusal becomes a clear error.
        orch.create_integration(APP, id="hook", template_id="unchecked-webhook", config=broken)
        failed = orch.wait_state(APP, "hook", "failed")
        error = wait_for(
            lambda: orch.call("GET", f"/api/v1/applications/{APP}/integrations/hook/activity?kind=error").json(),
            what="error event",
        )
        assert "invalid configuration: WEBHOOK_BODY: not valid JSON" in error[0]["message"]
        assert "exit code 2" in failed["status"]["last_error"] or "WEBHOOK_BODY" in failed["status"]["last_error"]
        # Fixing the configuration replaces the worker.
        orch.call(
            "PATCH", f"/api/v1/applications/{APP}/integrations/hook", 200, json={"config": {"body": '{"fixed": true}'}}
        )
        orch.wait_state(APP, "hook", "running")
    finally:
        orch.stop()


def test_workers_follow_registry_changes(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_integration(
        APP, id="hook", template_id="webhook", config={"url": sink.url + "/{{device.attributes.site}}/{{device_id}}"}
    )
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.create_device(APP, "late-dev", attributes={"site": "dock"})
    orchestrator.uplink(APP, "late-dev", {"f_port": 1})
    assert wait_for(sink.accepted)[0].path == "/dock/late-dev"
    orchestrator.call(
        "PATCH", f"/api/v1/applications/{APP}/devices/late-dev", 200, json={"attributes": {"site": "yard"}}
    )
    orchestrator.uplink(APP, "late-dev", {"f_port": 1})
    assert wait_for(lambda: len(sink.accepted()) == 2 and sink.accepted())[1].path == "/yard/late-dev"


def test_logs_tail_and_follow_without_secrets(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_integration(
        APP, id="hook", template_id="webhook", config={"url": sink.url, "auth_token": "super-secret-token-1"}
    )
    orchestrator.wait_state(APP, "hook", "running")
    lines = orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook/logs?tail=50", 200).json()
    assert any("integration hook running" in line for line in lines["lines"])
    assert orchestrator.api is not None
    with connect_sse(
        orchestrator.api, "GET", f"/api/v1/applications/{APP}/integrations/hook/logs?follow=true&tail=1", timeout=30
    ) as source:
        seen = []
        orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/hook/restart", 200)
        for event in source.iter_sse():
            seen.append(event.data)
            if "integration hook stopped" in event.data:
                break
    assert any("stopped" in line for line in seen)
    every_log = orchestrator.worker_logs() + orchestrator.log_tail(500)
    assert "super-secret-token-1" not in every_log


def test_deleting_an_application_stops_its_workers(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    orchestrator.create_application(APP)
    created = orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    pid = created["status"]["handle"]["pids"][0]
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}", 204)
    assert not pid_alive(pid)
    orchestrator.call("GET", f"/api/v1/applications/{APP}", 404)


def test_replicas_share_the_messages(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    created = orchestrator.create_integration(
        APP, id="hook", template_id="webhook", replicas=2, config={"url": sink.url}
    )
    assert len(created["status"]["handle"]["pids"]) == 2
    orchestrator.wait_state(APP, "hook", "running")
    for count in range(40):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})
    received = wait_for(lambda: len(sink.accepted()) >= 40 and sink.accepted(), what="40 deliveries")
    numbers = sorted(r.json()["uplink_message"]["decoded_payload"]["n"] for r in received)
    assert numbers == list(range(40))  # each exactly once
    logs = orchestrator.worker_logs()
    assert "life-app--hook.0.log" in logs and "life-app--hook.1.log" in logs

    # Scaled down to one: the replica that went takes no share of the messages with it, and none
    # arrives twice.
    sink.clear()
    orchestrator.call("PATCH", f"/api/v1/applications/{APP}/integrations/hook", 200, json={"replicas": 1})
    orchestrator.wait_state(APP, "hook", "running")
    for count in range(20):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})
    wait_for(lambda: len(sink.accepted()) >= 20, what="20 deliveries after scaling down")
    time.sleep(2)  # room for a duplicate to show up
    numbers = sorted(r.json()["uplink_message"]["decoded_payload"]["n"] for r in sink.accepted())
    assert numbers == list(range(20))


def test_replicas_forward_a_device_event_once(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    # Every replica keeps the registry, but only one forwards a registry change.
    orchestrator.create_application(APP)
    orchestrator.create_integration(
        APP, id="hook", template_id="webhook", replicas=2, config={"url": sink.url, "events": "device.create"}
    )
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.create_device(APP, "dev-new")
    wait_for(sink.accepted, what="the device event")
    time.sleep(2)  # room for a second copy to show up
    assert [r.json()["device"]["device_id"] for r in sink.accepted()] == ["dev-new"]


def test_a_crashed_managed_broker_is_restarted(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    orchestrator.wait_state(APP, "hook", "running")
    broker_pid = int((orchestrator.data_dir / "mosquitto" / "mosquitto.pid").read_text())
    os.kill(broker_pid, signal.SIGKILL)

    def recovered() -> dict[str, Any] | None:
        health = httpx.get(orchestrator.url + "/healthz", timeout=5)
        body = health.json()
        return body if health.status_code == 200 and body["managed_broker"]["restarts"] == 1 else None

    health = wait_for(recovered, timeout=30, what="the broker restarted and the handler reconnected")
    assert health["managed_broker"]["running"] is True
    # The worker reconnected too: a new uplink is delivered.
    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"after": "crash"}})
    (received,) = wait_for(sink.accepted, timeout=30, what="delivery after the broker restart")
    assert received.json()["uplink_message"]["decoded_payload"] == {"after": "crash"}


def test_a_second_orchestrator_on_the_same_data_directory_refuses_to_start(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    pid = orchestrator.wait_state(APP, "hook", "running")["status"]["handle"]["pids"][0]
    second = subprocess.run(
        [sys.executable, "-m", "orchestrator", "serve"],
        env={**orchestrator.env, "ORCH_PORT": str(free_port())},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    assert orchestrator.process is not None
    assert f"another orchestrator (pid {orchestrator.process.pid}) uses the data directory" in second.stderr
    assert "Traceback" not in second.stderr
    # The first one and its worker carry on.
    assert httpx.get(orchestrator.url + "/healthz", timeout=5).status_code == 200
    assert orchestrator.wait_state(APP, "hook", "running")["status"]["handle"]["pids"] == [pid] and pid_alive(pid)


def test_a_deleted_integration_leaves_no_queue_behind(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    # An integration created later under the same id starts afresh instead of receiving what was sent
    # while none existed. (The orchestrator ends the deleted one's broker session; Mosquitto would also
    # refuse to hand it to a client with another user name, but other brokers may not.)
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/old"})
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/integrations/hook", 204)
    for count in range(3):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"while_deleted": count}})
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/new"})
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"after": True}})
    wait_for(sink.accepted, what="the new integration's delivery")
    time.sleep(2)  # room for stale messages to show up
    assert [r.json()["uplink_message"]["decoded_payload"] for r in sink.accepted()] == [{"after": True}]


def test_an_unresponsive_broker_delays_uplinks_but_loses_none(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    # An uplink is logged before it is answered, so a broker that takes nothing (stopped, not dead) only
    # delays it: the API accepts it at once and the integration gets it when the broker is back.
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    orchestrator.wait_state(APP, "hook", "running")
    broker_pid = int((orchestrator.data_dir / "mosquitto" / "mosquitto.pid").read_text())
    path = f"/api/v1/applications/{APP}/devices/dev-1/uplinks"
    os.kill(broker_pid, signal.SIGSTOP)  # alive but silent: no acknowledgement comes
    try:
        started = time.monotonic()
        orchestrator.call("POST", path, 201, json={"f_port": 1, "decoded_payload": {"n": 1}}, timeout=30)
        assert time.monotonic() - started < 5
        time.sleep(1)
        assert sink.accepted() == []
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    (received,) = wait_for(sink.accepted, timeout=60, what="the uplink once the broker answers again")
    assert received.json()["uplink_message"]["decoded_payload"] == {"n": 1}


def test_the_secret_key_can_be_rotated(tmp_path: Path, mosquitto: str, sink: HttpSink) -> None:
    from cryptography.fernet import Fernet

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    orch = RunningOrchestrator(tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_SECRET_KEY=old)
    try:
        orch.start()
        orch.create_application(APP)
        orch.create_device(APP, "dev-1")
        config = {"url": sink.url, "auth_token": "tok-rotated"}
        orch.create_integration(APP, id="hook", template_id="webhook", config=config)
        orch.wait_state(APP, "hook", "running")
        # New key first, old one after: everything is sealed again with the new one at start...
        orch.stop()
        orch.env["ORCH_SECRET_KEY"] = f"{new},{old}"
        orch.start()
        orch.wait_state(APP, "hook", "running")
        # ...so the old key can go.
        orch.stop()
        orch.env["ORCH_SECRET_KEY"] = new
        orch.start()
        assert orch.wait_state(APP, "hook", "running")["secrets_set"] == ["auth_token"]
        orch.uplink(APP, "dev-1", {"f_port": 1})
        (received,) = wait_for(sink.accepted, what="a delivery with the secret still known")
        assert received.headers["authorization"] == "Bearer tok-rotated"
    finally:
        orch.stop()


def test_a_new_template_version_is_picked_up_without_a_needless_restart(
    tmp_path: Path, mosquitto: str, sink: HttpSink
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(PROJECT_ROOT / "integration_templates", templates)
    orch = RunningOrchestrator(
        tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_TEMPLATES_DIR=str(templates)
    )
    try:
        orch.start()
        orch.create_application(APP)
        orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
        running = orch.wait_state(APP, "hook", "running")
        assert running["template_version"] == "1.0.0"
        orch.stop(signal.SIGKILL)  # the worker keeps running; the orchestrator comes back with a newer template
        webhook = templates / "webhook.yaml"
        webhook.write_text(webhook.read_text().replace("version: 1.0.0", "version: 1.0.1", 1))
        orch.start()
        upgraded = wait_for(
            lambda: (i := orch.integration(APP, "hook"))["template_version"] == "1.0.1" and i,
            what="the integration on the new template version",
        )
        # Same image and environment: the worker it adopted goes on (same pid, no restart).
        assert upgraded["status"]["handle"]["pids"] == running["status"]["handle"]["pids"]
        assert upgraded["status"]["restart_count"] == 0
    finally:
        orch.stop()
