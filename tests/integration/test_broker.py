"""The broker as devices and operators meet it: accounts by dynamic security, TLS and WebSockets, TTS logins,
restarts, and start-up errors that name the setting at fault. Managed and external (deploy/mosquitto) brokers."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.broker import ExternalBroker
from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator, free_port, start_fails
from tests.support.sink import HttpSink
from tests.support.tls import make_certificates
from tests.support.waiting import wait_for

APP = "demo-app"
NOT_AUTHORIZED = 135


def username_of(key: str) -> str:
    return ".".join(key.split(".")[:2])


def webhook_to(orch: RunningOrchestrator, sink: HttpSink) -> None:
    orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/up"})
    orch.wait_state(APP, "hook", "running")


def uplink(client: MqttProbe, device: str, f_cnt: int) -> None:
    client.publish(f"v3/{APP}/devices/{device}/up/push", {"f_port": 1, "f_cnt": f_cnt, "frm_payload": "AQ=="})


def received_counts(sink: HttpSink) -> set[int]:
    return {json.loads(request.body)["uplink_message"]["f_cnt"] for request in sink.requests}


def puback_code(url: str, username: str, password: str, topic: str) -> int | None:
    """Publish once with QoS 1 over MQTT 5 with Mosquitto's own client; the PUBACK's reason code."""
    login = ["-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1], "-u", username, "-P", password]
    result = subprocess.run(
        ["mosquitto_pub", "-V", "mqttv5", "-d", *login, "-q", "1", "-t", topic, "-m", "{}"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    for line in result.stdout.splitlines():
        if "received PUBACK" in line:
            return int(line.split("RC:")[1].rstrip(")")) if "RC:" in line else 0
    return None


def test_devices_connect_over_tls_and_websockets_and_their_uplinks_reach_a_webhook(
    tmp_path: Path, mosquitto: str, sink: HttpSink
) -> None:
    ca, cert, key = make_certificates(tmp_path / "certs")
    tls_port, wss_port = free_port(), free_port()
    orch = RunningOrchestrator(
        tmp_path / "orchestrator",
        ORCH_BROKER__MOSQUITTO_BINARY=mosquitto,
        ORCH_BROKER__LISTEN_HOST="127.0.0.1",
        ORCH_BROKER__TLS_CERT_FILE=str(cert),
        ORCH_BROKER__TLS_KEY_FILE=str(key),
        ORCH_BROKER__TLS_PORT=str(tls_port),
        ORCH_BROKER__WEBSOCKETS_TLS_PORT=str(wss_port),
    ).start()
    try:
        orch.create_application(APP)
        orch.create_device(APP, "dev-1")
        webhook_to(orch, sink)
        device_key = orch.create_key(APP, "uplinks:write")
        urls = {
            "tls": f"mqtts://127.0.0.1:{tls_port}",
            "websockets": f"ws://127.0.0.1:{orch.websockets_port}",
            "secure websockets": f"wss://127.0.0.1:{wss_port}",
        }
        health = orch.call("GET", "/healthz", 200).json()
        assert set(urls.values()) <= set(health["managed_broker"]["listeners"])
        for f_cnt, url in enumerate(urls.values(), start=1):
            device = MqttProbe(url, username_of(device_key), device_key, ca=ca)
            assert not device.refused, url
            uplink(device, "dev-1", f_cnt)
            device.close()
        wait_for(lambda: received_counts(sink) == {1, 2, 3}, 20, what="three uplinks at the webhook")
        # TLS is checked: a client that does not trust the test CA gets no connection.
        with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
            MqttProbe(urls["tls"], username_of(device_key), device_key)
    finally:
        orch.stop()


def test_a_key_revoked_while_connected_is_cut_off_and_cannot_come_back(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    revoked = orchestrator.create_key(APP, "messages:read", "uplinks:write")
    kept = orchestrator.create_key(APP, "messages:read")
    leaving = MqttProbe(orchestrator.mqtt_url, username_of(revoked), revoked, version=5)
    staying = MqttProbe(orchestrator.mqtt_url, username_of(kept), kept, version=5)
    staying.subscribe(f"v3/{APP}/#")
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/keys/{username_of(revoked)}", 204)
    # The broker's account is gone by the time the API answers: the connection is closed at once.
    wait_for(lambda: leaving.disconnects, 1.0, what="the revoked key's connection to be closed")
    assert MqttProbe(orchestrator.mqtt_url, username_of(revoked), revoked, version=5).connack == [NOT_AUTHORIZED]
    # Nobody else was affected.
    orchestrator.create_device(APP, "after")
    staying.collect(1, topic_suffix="/events/create")
    assert not staying.disconnects
    leaving.close()
    staying.close()


def test_the_things_stack_logins_work_within_the_keys_scopes(tmp_path: Path, mosquitto: str) -> None:
    orch = RunningOrchestrator(
        tmp_path / "orchestrator", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_BROKER__TENANT="ttn"
    ).start()
    try:
        orch.create_application(APP)
        orch.create_application("other-app")
        orch.create_device(APP, "dev-1")
        body = {"scopes": ["messages:read", "uplinks:write"], "application_login": True}
        created = orch.call("POST", f"/api/v1/applications/{APP}/keys", 201, json=body).json()
        key = created["key"]
        assert created["mqtt_usernames"] == [created["id"], APP, f"{APP}@ttn"]

        for username in (APP, f"{APP}@ttn"):
            client = MqttProbe(orch.mqtt_url, username, key, version=5)
            assert client.subscribe(f"v3/{APP}/devices/+/up") == [1]
            assert client.subscribe("v3/other-app/#") == [NOT_AUTHORIZED]
            uplink(client, "dev-1", 7)
            # The previous round's PUBACK probe sent an uplink too: look for this one among what arrives.
            wait_for(
                lambda probe=client: any(
                    isinstance(body, dict) and body.get("uplink_message", {}).get("f_cnt") == 7
                    for _, body in probe.collect(1, topic_suffix="/up")
                ),
                20,
                what="the uplink with f_cnt 7",
            )
            client.close()
            # uplinks:write, but not downlinks:write: the broker says "not authorized" to this publish only.
            assert puback_code(orch.mqtt_url, username, key, f"v3/{APP}/devices/dev-1/down/push") == NOT_AUTHORIZED
            assert puback_code(orch.mqtt_url, username, key, f"v3/{APP}/devices/dev-1/up/push") == 0
        # Wrong passwords are refused, and the connected are not affected.
        connected = MqttProbe(orch.mqtt_url, APP, key, version=5)
        assert MqttProbe(orch.mqtt_url, APP, key + "x", version=5).connack == [NOT_AUTHORIZED]
        assert MqttProbe(orch.mqtt_url, "other-app", key, version=5).connack == [NOT_AUTHORIZED]
        assert connected.subscribe(f"v3/{APP}/#") == [1] and not connected.disconnects

        # A newer login key takes the application's name over; the old key keeps its own username.
        body = {"scopes": ["messages:read"], "application_login": True}
        newer = orch.call("POST", f"/api/v1/applications/{APP}/keys", 201, json=body).json()["key"]
        wait_for(lambda: connected.disconnects, 2.0, what="the old login's connection to be closed")
        assert MqttProbe(orch.mqtt_url, APP, key, version=5).connack == [NOT_AUTHORIZED]
        assert MqttProbe(orch.mqtt_url, APP, newer, version=5).connack == [0]
        assert MqttProbe(orch.mqtt_url, username_of(key), key, version=5).connack == [0]
        keys = orch.call("GET", f"/api/v1/applications/{APP}/keys", 200).json()
        assert {k["id"]: k["application_login"] for k in keys} == {username_of(key): False, username_of(newer): True}
    finally:
        orch.stop()


@pytest.mark.parametrize("orchestrator", ["managed", "external"], indirect=True)
def test_after_a_broker_crash_accounts_are_made_again_and_changes_made_meanwhile_apply(
    orchestrator: RunningOrchestrator,
) -> None:
    orchestrator.create_application(APP)
    kept = orchestrator.create_key(APP, "messages:read")
    revoked = orchestrator.create_key(APP, "messages:read")
    # The broker publishes its uptime every 10 s: a restart shows as an uptime lower than the last one.
    wait_for(lambda: (_health(orchestrator)["broker_details"]["uptime_seconds"] or 0) >= 10, 25, what="uptime 10 s")

    broker = orchestrator.external_broker
    # An account lost behind the orchestrator's back (a broker restored from an old backup, say).
    password = broker.password if broker else (orchestrator.data_dir / "broker.password").read_text().strip()
    login = ["-h", "127.0.0.1", "-p", orchestrator.mqtt_url.rsplit(":", 1)[1], "-u", "orchestrator", "-P", password]
    subprocess.run(["mosquitto_ctrl", *login, "dynsec", "deleteClient", username_of(kept)], check=True, timeout=20)
    assert MqttProbe(orchestrator.mqtt_url, username_of(kept), kept, version=5).connack == [NOT_AUTHORIZED]
    synced_before = _health(orchestrator)["broker_details"]["accounts"]["synced_at"]
    if broker is None:
        pid = int((orchestrator.data_dir / "mosquitto" / "mosquitto.pid").read_text())
        os.kill(pid, signal.SIGKILL)
    else:
        broker.kill()
    wait_for(lambda: _health(orchestrator)["broker"] == "disconnected", 10, what="the orchestrator to see the crash")
    # Changes while the broker is away: kept in the database, applied when it is back.
    made = orchestrator.create_key(APP, "messages:read")
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/keys/{username_of(revoked)}", 204)
    if broker is not None:
        broker.start()

    def back() -> dict[str, Any] | None:
        health = _health(orchestrator)
        details = health["broker_details"]
        synced = details["accounts"]["synced_at"] not in (None, synced_before)
        done = health["broker"] == "connected" and details["restarts_seen"] == 1 and synced
        return health if done else None

    health = wait_for(back, 40, what="/healthz to show the broker's restart")
    assert health["broker_details"]["accounts"]["errors"] == []
    for key, expected in ((kept, 0), (made, 0), (revoked, NOT_AUTHORIZED)):
        assert MqttProbe(orchestrator.mqtt_url, username_of(key), key, version=5).connack == [expected]


def _health(orch: RunningOrchestrator) -> dict[str, Any]:
    return httpx.get(f"{orch.url}/healthz", timeout=5).json()  # type: ignore[no-any-return]


def test_start_up_errors_name_the_setting_at_fault(tmp_path: Path, mosquitto: str) -> None:
    line = start_fails(tmp_path / "plugin", mosquitto, ORCH_BROKER__DYNSEC_PLUGIN=str(tmp_path / "missing.so"))
    assert "ORCH_BROKER__DYNSEC_PLUGIN" in line and "missing.so" in line

    ca, cert, _ = make_certificates(tmp_path / "certs")
    unreadable = tmp_path / "certs" / "unreadable.key"  # a folder: unreadable even for root
    unreadable.mkdir()
    tls = {"ORCH_BROKER__TLS_CERT_FILE": str(cert), "ORCH_BROKER__TLS_PORT": str(free_port())}
    line = start_fails(tmp_path / "tls", mosquitto, ORCH_BROKER__TLS_KEY_FILE=str(unreadable), **tls)
    assert line.startswith("cannot start: ORCH_BROKER__TLS_KEY_FILE: cannot read")
    line = start_fails(tmp_path / "mismatch", mosquitto, ORCH_BROKER__TLS_KEY_FILE=str(ca), **tls)
    assert "ORCH_BROKER__TLS_CERT_FILE, ORCH_BROKER__TLS_KEY_FILE" in line

    broker = ExternalBroker(tmp_path / "external", mosquitto).start()
    try:
        settings = broker.orchestrator_settings() | {"ORCH_BROKER__PASSWORD": "not-the-password"}
        line = start_fails(tmp_path / "login", mosquitto, **settings)
        assert "ORCH_BROKER__USERNAME, ORCH_BROKER__PASSWORD" in line
    finally:
        broker.stop()

    # An external broker without the plugin: nobody answers on its control topic.
    port = free_port()
    (tmp_path / "plain.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    plain = subprocess.Popen([mosquitto, "-c", str(tmp_path / "plain.conf")], stderr=subprocess.DEVNULL)
    try:
        external = {"ORCH_BROKER__MODE": "external", "ORCH_BROKER__PASSWORD": "x"}
        line = start_fails(tmp_path / "no-plugin", mosquitto, ORCH_BROKER__URL=f"mqtt://127.0.0.1:{port}", **external)
        assert "did not answer on $CONTROL/dynamic-security/v1" in line and "dynamic security plugin" in line
    finally:
        plain.kill()
        plain.wait()


def test_passwords_are_not_in_the_brokers_files_or_the_api(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    key = orchestrator.create_key(APP, "messages:read")
    assert MqttProbe(orchestrator.mqtt_url, username_of(key), key).connack == [0]
    admin_password = (orchestrator.data_dir / "broker.password").read_text().strip()
    folder = orchestrator.data_dir / "mosquitto"
    texts = [path.read_bytes() for path in folder.iterdir() if path.is_file()]
    assert texts
    for secret in (admin_password, key):
        for encoded in (secret.encode(), base64.b64encode(secret.encode())):
            assert not any(encoded in text for text in texts)
        assert secret not in json.dumps(_health(orchestrator))
    listed = orchestrator.call("GET", f"/api/v1/applications/{APP}/keys", 200).text
    assert key not in listed and key.split(".")[2] not in listed
