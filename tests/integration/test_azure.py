"""The Azure IoT Hub image with the real azure-iot-device SDK against a TLS Mosquitto that speaks the hub's
topic layout, and a contract double of the hub's registry REST API (no Azure emulator exists)."""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import paho.mqtt.client as paho
import pytest

from tests.conftest import IotHub
from tests.support.iothub import hub_client
from tests.support.orchestrator import RunningOrchestrator
from tests.support.waiting import wait_for

APP = "az-app"


class Telemetry:
    """Everything devices publish on the hub broker."""

    def __init__(self, hub: IotHub) -> None:
        self.messages: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        self.client = hub_client(hub.ca, f"telemetry-{uuid.uuid4().hex[:6]}")
        self.client.on_message = self._on_message
        self.client.subscribe("devices/+/messages/events/#", qos=1)

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        parts = message.topic.split("/", 4)
        properties = {key: values[0] for key, values in parse_qs(unquote(parts[4]) if len(parts) > 4 else "").items()}
        with self.lock:
            self.messages.append((parts[1], properties, message.payload))

    def of(self, device: str) -> list[tuple[str, dict[str, str], bytes]]:
        with self.lock:
            return [m for m in self.messages if m[0] == device]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def telemetry(iothub: IotHub) -> Any:
    watcher = Telemetry(iothub)
    yield watcher
    watcher.close()


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:6]}-"


def test_registry_changes_are_mirrored_into_the_hub(orchestrator: RunningOrchestrator, iothub: IotHub) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "early", attributes={"site": "a"})
    pre = prefix()
    iothub.registry.devices[f"{pre}foreign"] = {"deviceId": f"{pre}foreign"}  # someone else's: left alone
    iothub.registry.twins[f"{pre}foreign"] = {
        "deviceId": f"{pre}foreign",
        "tags": {},
        "version": 1,
        "properties": {"desired": {}, "reported": {}},
    }
    orchestrator.create_integration(
        APP, id="azure", template_id="azure-iot-hub", config=iothub.integration_config(device_id_prefix=pre)
    )
    orchestrator.wait_state(APP, "azure", "running", timeout=60)
    assert f"{pre}early" in iothub.registry.ids()  # full sync at start-up
    assert iothub.registry.twin(f"{pre}early")["tags"]["attributes"] == {"site": "a"}

    orchestrator.create_device(APP, "late", dev_eui="0004A30B001C0530")
    wait_for(lambda: f"{pre}late" in iothub.registry.ids(), what="the new device in the hub")
    orchestrator.call("PATCH", f"/api/v1/applications/{APP}/devices/late", 200, json={"attributes": {"floor": "3"}})
    wait_for(lambda: iothub.registry.twin(f"{pre}late")["tags"]["attributes"] == {"floor": "3"}, what="new tags")
    assert iothub.registry.twin(f"{pre}late")["tags"]["devEui"] == "0004A30B001C0530"
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/devices/early", 204)
    wait_for(lambda: f"{pre}early" not in iothub.registry.ids(), what="the deleted device gone from the hub")
    assert f"{pre}foreign" in iothub.registry.ids()
    methods = {method for method, _ in iothub.registry.requests}
    assert {"PUT", "PATCH", "DELETE", "POST"} <= methods  # every call carried a valid SAS token (else 401)


def test_uplinks_become_telemetry_and_reported_properties(
    orchestrator: RunningOrchestrator, iothub: IotHub, telemetry: Telemetry
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "meter")
    pre = prefix()
    orchestrator.create_integration(
        APP, id="azure", template_id="azure-iot-hub", config=iothub.integration_config(device_id_prefix=pre)
    )
    orchestrator.wait_state(APP, "azure", "running", timeout=60)
    iothub.twins.twin_device = f"{pre}meter"
    uplink = orchestrator.uplink(APP, "meter", {"f_port": 2, "decoded_payload": {"kwh": 12.5}})["uplink"]

    _device, properties, body = wait_for(lambda: telemetry.of(f"{pre}meter"), what="telemetry")[0]
    assert json.loads(body) == uplink
    assert properties["application_id"] == APP and properties["f_port"] == "2"
    assert properties["correlation_id"] == uplink["correlation_ids"][0]
    assert properties["$.ct"] == "application/json" and properties["$.ce"] == "utf-8"
    reported = wait_for(
        lambda: iothub.registry.twin(f"{pre}meter")["properties"]["reported"].get("decodedPayload"),
        what="the reported decoded payload",
    )
    assert reported == {"kwh": 12.5}


def test_cloud_to_device_messages_and_desired_properties_become_downlinks(
    orchestrator: RunningOrchestrator, iothub: IotHub, telemetry: Telemetry
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "valve")
    pre = prefix()
    orchestrator.create_integration(
        APP,
        id="azure",
        template_id="azure-iot-hub",
        config=iothub.integration_config(device_id_prefix=pre, downlink_f_port=9),
    )
    orchestrator.wait_state(APP, "azure", "running", timeout=60)
    hub_id = f"{pre}valve"
    iothub.twins.twin_device = hub_id
    orchestrator.uplink(APP, "valve", {"f_port": 1})  # connects the device, as in class A
    wait_for(lambda: telemetry.of(hub_id), what="the device connected")
    queue = f"/api/v1/applications/{APP}/devices/valve/downlinks"

    telemetry.client.publish(f"devices/{hub_id}/messages/devicebound/f_port=7&confirmed=true", b"\x01\x02", qos=1)
    first = wait_for(lambda: orchestrator.call("GET", queue).json()["downlinks"], what="the C2D downlink")[0]
    assert first["f_port"] == 7 and first["frm_payload"] == "AQI=" and first["confirmed"] is True

    iothub.twins.send_desired(hub_id, {"decodedPayload": {"open": True}})
    downlinks = wait_for(
        lambda: len(d := orchestrator.call("GET", queue).json()["downlinks"]) >= 2 and d,
        what="the desired-properties downlink",
    )
    assert downlinks[1]["decoded_payload"] == {"open": True} and downlinks[1]["f_port"] == 9
    version = iothub.registry.twin(hub_id)["properties"]["desired"]["$version"]
    wait_for(
        lambda: iothub.registry.twin(hub_id)["properties"]["reported"].get("lastDesiredVersion") == version,
        what="the desired version acknowledged",
    )

    telemetry.client.publish(f"devices/{hub_id}/messages/devicebound/f_port=300", b"\x01", qos=1)
    errors = wait_for(
        lambda: orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/azure/activity?kind=error").json(),
        what="error event",
    )
    assert "invalid cloud-to-device message" in errors[0]["message"] and "f_port" in errors[0]["message"]


def test_bad_key_is_a_clear_error_and_throttling_is_retried(orchestrator: RunningOrchestrator, iothub: IotHub) -> None:
    orchestrator.create_application(APP)
    wrong = iothub.integration_config(policy_key="d3Jvbmcta2V5LXdyb25nLWtleQ==")
    orchestrator.create_integration(APP, id="wrong", template_id="azure-iot-hub", config=wrong)
    integration = wait_for(
        lambda: (i := orchestrator.integration(APP, "wrong"))["status"]["last_error"] and i, what="the bad key error"
    )
    assert "refused the shared access policy 'iothubowner' (HTTP 401)" in integration["status"]["last_error"]
    assert integration["status"]["actual"] == "starting" and integration["status"]["restart_count"] == 0
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/integrations/wrong", 204)

    pre = prefix()
    orchestrator.create_integration(
        APP, id="azure", template_id="azure-iot-hub", config=iothub.integration_config(device_id_prefix=pre)
    )
    orchestrator.wait_state(APP, "azure", "running", timeout=60)
    iothub.registry.throttle_next = 3
    orchestrator.create_device(APP, "busy")
    wait_for(lambda: f"{pre}busy" in iothub.registry.ids(), what="the device, after throttling", timeout=60)
    assert iothub.registry.throttle_next == 0


def test_restart_loses_no_uplinks(orchestrator: RunningOrchestrator, iothub: IotHub, telemetry: Telemetry) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "tank")
    pre = prefix()
    orchestrator.create_integration(
        APP,
        id="azure",
        template_id="azure-iot-hub",
        config=iothub.integration_config(device_id_prefix=pre, report_decoded_payload=False),
    )
    orchestrator.wait_state(APP, "azure", "running", timeout=60)
    orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/azure/disable", 200)
    for count in range(10):
        orchestrator.uplink(APP, "tank", {"f_port": 1, "decoded_payload": {"n": count}})
    orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/azure/enable", 200)
    received = wait_for(lambda: len(m := telemetry.of(f"{pre}tank")) >= 10 and m, timeout=60, what="10 messages")
    numbers = sorted(json.loads(body)["uplink_message"]["decoded_payload"]["n"] for _, _, body in received)
    assert numbers == list(range(10))


def test_runs_as_a_container(tmp_path: Path, mosquitto: str, iothub: IotHub, telemetry: Telemetry) -> None:
    import docker

    from tests.integration.test_docker import docker_orchestrator, remove_all

    engine = docker.from_env()
    try:
        engine.images.get("iot-orchestrator/azure-iot-hub:0.1.0")
    except docker.errors.ImageNotFound:
        pytest.fail("iot-orchestrator/azure-iot-hub:0.1.0 is not built; run ./scripts/build-images --local-base")
    orch = docker_orchestrator(tmp_path / "o", mosquitto).start()
    try:
        orch.create_application(APP)
        orch.create_device(APP, "boxed")
        pre = prefix()
        orch.create_integration(
            APP,
            id="azure",
            template_id="azure-iot-hub",
            config=iothub.integration_config(device_id_prefix=pre, report_decoded_payload=False),
        )
        assert orch.wait_state(APP, "azure", "running", timeout=90)["status"]["runtime"] == "docker"
        assert f"{pre}boxed" in iothub.registry.ids()
        orch.uplink(APP, "boxed", {"f_port": 1, "decoded_payload": {"from": "container"}})
        _, _, body = wait_for(lambda: telemetry.of(f"{pre}boxed"), timeout=60, what="telemetry from the container")[0]
        assert json.loads(body)["uplink_message"]["decoded_payload"] == {"from": "container"}
    finally:
        orch.stop()
        remove_all(engine, orch)
