"""The MQTT bridge against a user's own Mosquitto (TLS with its own CA, a password): events go there on The Things
Stack's topics, downlinks published there reach the device, and neither side loses anything while the bridge
is away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import UserBroker
from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.waiting import wait_for

APP = "bridged"


@pytest.fixture
def user_broker(tmp_path: Path, mosquitto: str) -> Iterator[UserBroker]:
    broker = UserBroker(tmp_path / "user-broker", mosquitto).start()
    yield broker
    broker.stop()


def test_events_reach_the_users_broker_and_its_downlinks_reach_the_device(
    orchestrator: RunningOrchestrator, user_broker: UserBroker
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev1")
    app = MqttProbe(user_broker.tls_url, "bridge", "bridge-pw", ca=user_broker.ca)  # the user's own application
    app.subscribe(f"v3/{APP}/devices/+/#")
    path = f"/api/v1/applications/{APP}/integrations"
    config = {
        "url": user_broker.tls_url,
        "username": "bridge",
        "password": "bridge-pw",
        "ca_pem": user_broker.ca.read_text(),
        "events": "uplink,join.accept,downlink.sent",
    }
    refused = orchestrator.call(
        "POST", path, 422, json={"template_id": "mqtt-bridge", "config": {**config, "ca_pem": "not a certificate"}}
    ).json()
    assert refused["errors"][0]["field"] == "config.ca_pem" and "PEM" in refused["errors"][0]["message"]
    refused = orchestrator.call(
        "POST", path, 422, json={"template_id": "mqtt-bridge", "config": {**config, "topic": "x/{device}/#"}}
    ).json()
    assert refused["errors"][0]["field"] == "config.topic"
    orchestrator.create_integration(APP, id="bridge", template_id="mqtt-bridge", config=config)
    orchestrator.wait_state(APP, "bridge", "running")
    assert "bridge-pw" not in json.dumps(orchestrator.integration(APP, "bridge"))

    uplink = orchestrator.uplink(APP, "dev1", {"f_port": 1, "decoded_payload": {"temperature": 21.5}})["uplink"]
    join = orchestrator.call("POST", f"/api/v1/applications/{APP}/devices/dev1/reports/join", 201, json={}).json()
    assert app.collect(1, topic_suffix="/dev1/up")[0] == (f"v3/{APP}/devices/dev1/up", uplink)
    assert app.collect(1, topic_suffix="/dev1/join")[0][1] == join

    # A downlink the application publishes there is queued, and goes out with the device's next uplink.
    app.publish(f"v3/{APP}/devices/dev1/down/push", {"downlinks": [{"f_port": 3, "frm_payload": "AQ=="}]})
    downlinks = f"/api/v1/applications/{APP}/devices/dev1/downlinks"
    wait_for(lambda: orchestrator.call("GET", downlinks, 200).json()["downlinks"], what="the bridged downlink")
    sent = orchestrator.uplink(APP, "dev1", {"f_port": 1})["downlink"]
    assert (sent["f_port"], sent["frm_payload"]) == (3, "AQ==")
    echoed = app.collect(1, topic_suffix="/dev1/down/sent")[0][1]  # its own event, not taken for a request
    assert echoed["downlink_sent"]["f_port"] == 3

    app.publish(f"v3/{APP}/devices/dev1/down/push", {"downlinks": [{"f_port": 0, "frm_payload": "AQ=="}]})
    activity = f"{path}/bridge/activity?kind=error"
    errors = wait_for(lambda: orchestrator.call("GET", activity, 200).json(), what="the refused downlink's error")
    assert "f_port" in errors[0]["message"] and "refused" in errors[0]["message"]

    # While the bridge is away, uplinks wait in the handler's broker and downlinks in the user's: none is lost.
    orchestrator.call("POST", f"{path}/bridge/disable", 200)
    orchestrator.wait_state(APP, "bridge", "stopped")
    for number in range(3):
        orchestrator.uplink(APP, "dev1", {"f_port": 1, "decoded_payload": {"n": number}})
    app.publish(f"v3/{APP}/devices/dev1/down/push", {"downlinks": [{"f_port": 9, "frm_payload": "CQ=="}]})
    orchestrator.call("POST", f"{path}/bridge/enable", 200)
    ups = app.collect(5, topic_suffix="/dev1/up", timeout=40)
    assert [body["uplink_message"]["decoded_payload"].get("n") for _, body in ups[2:]] == [0, 1, 2]
    queued = wait_for(lambda: orchestrator.call("GET", downlinks, 200).json()["downlinks"], timeout=40)
    assert [item["f_port"] for item in queued] == [9]
    app.close()
