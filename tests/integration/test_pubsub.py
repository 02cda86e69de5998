"""The Pub/Sub image against Google's emulator, with the real client library, on both runtimes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.pubsub import PubSubEmulator, pull
from tests.support.waiting import wait_for

APP = "ps-app"
PROJECT = "test-project"


@pytest.fixture
def names(pubsub_emulator: PubSubEmulator) -> Iterator[dict[str, Any]]:
    """Fresh topics and subscriptions on the emulator for one test."""
    publisher, subscriber = pubsub_emulator.clients()
    tag = uuid.uuid4().hex[:8]
    made = {
        "publisher": publisher,
        "subscriber": subscriber,
        "topic": f"uplinks-{tag}",
        "reader": f"projects/{PROJECT}/subscriptions/reader-{tag}",
        "down_topic": f"downlinks-{tag}",
        "down_sub": f"down-{tag}",
        "dead": f"dead-{tag}",
    }
    topic_path = publisher.topic_path(PROJECT, made["topic"])
    publisher.create_topic(request={"name": topic_path})
    subscriber.create_subscription(request={"name": made["reader"], "topic": topic_path})
    yield made
    subscriber.close()


def create(orch: RunningOrchestrator, emulator: PubSubEmulator, names: dict[str, Any], **config: Any) -> None:
    orch.create_integration(
        APP,
        id="pubsub",
        template_id="google-pubsub",
        config={"project_id": PROJECT, "topic": names["topic"], "emulator_host": emulator.host, **config},
    )


def test_uplinks_and_device_events_arrive_with_body_and_attributes(
    orchestrator: RunningOrchestrator, pubsub_emulator: PubSubEmulator, names: dict[str, Any]
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    create(orchestrator, pubsub_emulator, names)
    orchestrator.wait_state(APP, "pubsub", "running")
    uplink = orchestrator.uplink(APP, "dev-1", {"f_port": 3, "decoded_payload": {"t": 20.5}})["uplink"]
    orchestrator.create_device(APP, "dev-2", attributes={"kind": "valve"})

    messages = pull(names["subscriber"], names["reader"], 2)
    by_event = {m.attributes["event"]: m for m in messages}
    up = by_event["uplink"]
    assert json.loads(up.data) == uplink
    assert dict(up.attributes) == {
        "application_id": APP,
        "device_id": "dev-1",
        "event": "uplink",
        "integration_id": "pubsub",
        "correlation_id": uplink["correlation_ids"][0],
        "received_at": uplink["received_at"],
    }
    created = by_event["device.create"]
    assert created.attributes["device_id"] == "dev-2"
    assert json.loads(created.data)["device"]["attributes"] == {"kind": "valve"}


def test_downlinks_from_the_subscription_reach_the_device(
    orchestrator: RunningOrchestrator, pubsub_emulator: PubSubEmulator, names: dict[str, Any]
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    key = orchestrator.create_key(APP, "messages:read")
    watcher = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    watcher.subscribe(f"v3/{APP}/devices/+/down/#")
    create(
        orchestrator,
        pubsub_emulator,
        names,
        subscription=names["down_sub"],
        downlink_topic=names["down_topic"],
        dead_letter_topic=names["dead"],
        create_if_missing=True,
    )
    orchestrator.wait_state(APP, "pubsub", "running")
    publisher = names["publisher"]
    down_topic = publisher.topic_path(PROJECT, names["down_topic"])
    dead_topic = publisher.topic_path(PROJECT, names["dead"])
    dead_reader = f"projects/{PROJECT}/subscriptions/dead-reader-{uuid.uuid4().hex[:6]}"
    names["subscriber"].create_subscription(request={"name": dead_reader, "topic": dead_topic})

    publisher.publish(down_topic, json.dumps({"f_port": 5, "frm_payload": "AQI="}).encode(), device_id="dev-1").result()
    pushed = watcher.collect(1, topic_suffix="/down/push")[0][1]["downlinks"][0]
    assert pushed["f_port"] == 5 and pushed["frm_payload"] == "AQI="
    queue = wait_for(
        lambda: orchestrator.call("GET", f"/api/v1/applications/{APP}/devices/dev-1/downlinks").json()["downlinks"],
        what="queued downlink",
    )
    assert queue[0]["frm_payload"] == "AQI="

    # Invalid messages: an error event each, dead-lettered, never redelivered.
    publisher.publish(down_topic, b"not json").result()
    publisher.publish(
        down_topic, json.dumps({"f_port": 999, "frm_payload": "AQI="}).encode(), device_id="dev-1"
    ).result()
    publisher.publish(
        down_topic, json.dumps({"device_id": "ghost", "f_port": 1, "frm_payload": "AA=="}).encode()
    ).result()
    errors = wait_for(
        lambda: (
            len(
                e := orchestrator.call(
                    "GET", f"/api/v1/applications/{APP}/integrations/pubsub/activity?kind=error"
                ).json()
            )
            >= 3
            and e
        ),
        what="three error events",
    )
    text = " | ".join(error["message"] for error in errors)
    assert "not JSON" in text and "f_port" in text and "device 'ghost' does not exist" in text
    dead = pull(names["subscriber"], dead_reader, 3)
    assert all(message.attributes["error"] for message in dead)
    assert len(orchestrator.call("GET", f"/api/v1/applications/{APP}/devices/dev-1/downlinks").json()["downlinks"]) == 1
    watcher.close()


def test_missing_topic_is_a_clear_error_not_a_crash_loop(
    orchestrator: RunningOrchestrator, pubsub_emulator: PubSubEmulator, names: dict[str, Any]
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    create(orchestrator, pubsub_emulator, {**names, "topic": "no-such-topic"})
    integration = wait_for(
        lambda: (i := orchestrator.integration(APP, "pubsub"))["status"]["last_error"] and i, what="the setup error"
    )
    assert "topic projects/test-project/topics/no-such-topic does not exist" in integration["status"]["last_error"]
    assert integration["status"]["actual"] == "starting" and integration["status"]["restart_count"] == 0
    # Uplinks wait in the broker; once the topic exists, they arrive.
    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"early": True}})
    publisher = names["publisher"]
    topic_path = publisher.topic_path(PROJECT, "no-such-topic")
    publisher.create_topic(request={"name": topic_path})
    reader = f"projects/{PROJECT}/subscriptions/late-{uuid.uuid4().hex[:6]}"
    names["subscriber"].create_subscription(request={"name": reader, "topic": topic_path})
    orchestrator.wait_state(APP, "pubsub", "running", timeout=90)
    message = pull(names["subscriber"], reader, 1, timeout=60)[0]
    assert json.loads(message.data)["uplink_message"]["decoded_payload"] == {"early": True}


def test_restart_loses_no_uplinks(
    orchestrator: RunningOrchestrator, pubsub_emulator: PubSubEmulator, names: dict[str, Any]
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    create(orchestrator, pubsub_emulator, names, events="uplink")
    orchestrator.wait_state(APP, "pubsub", "running")
    orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/pubsub/disable", 200)
    for count in range(30):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})
    orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/pubsub/enable", 200)
    messages = pull(names["subscriber"], names["reader"], 30)
    assert sorted(json.loads(m.data)["uplink_message"]["decoded_payload"]["n"] for m in messages) == list(range(30))


def test_runs_as_a_container(
    tmp_path: Path, mosquitto: str, pubsub_emulator: PubSubEmulator, names: dict[str, Any]
) -> None:
    import docker

    from tests.integration.test_docker import docker_orchestrator, remove_all

    engine = docker.from_env()
    try:
        engine.images.get("iot-orchestrator/google-pubsub:0.1.0")
    except docker.errors.ImageNotFound:
        pytest.fail("iot-orchestrator/google-pubsub:0.1.0 is not built; run ./scripts/build-images --local-base")
    orch = docker_orchestrator(tmp_path / "o", mosquitto).start()
    try:
        orch.create_application(APP)
        orch.create_device(APP, "dev-1")
        create(orch, pubsub_emulator, names, events="uplink")
        assert orch.wait_state(APP, "pubsub", "running", timeout=90)["status"]["runtime"] == "docker"
        orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"from": "container"}})
        message = pull(names["subscriber"], names["reader"], 1)[0]
        assert json.loads(message.data)["uplink_message"]["decoded_payload"] == {"from": "container"}
    finally:
        orch.stop()
        remove_all(engine, orch)


def test_named_events_are_selected_by_prefix_and_device(
    orchestrator: RunningOrchestrator, pubsub_emulator: PubSubEmulator, names: dict[str, Any]
) -> None:
    """As a Particle user selects: only `temp…` events of photon-1 reach the topic; the rest is left alone."""
    orchestrator.create_application(APP)
    for device in ("photon-1", "photon-2"):
        orchestrator.create_device(APP, device)
    create(orchestrator, pubsub_emulator, names, events="publish", event_prefix="temp", devices="photon-1")
    orchestrator.wait_state(APP, "pubsub", "running")
    path = f"/api/v1/applications/{APP}/devices/{{}}/reports/publish"
    for device, name in [("photon-1", "hum"), ("photon-2", "temp"), ("photon-1", "temperature"), ("photon-1", "temp")]:
        orchestrator.call("POST", path.format(device), 201, json={"name": name, "data": "1"})
    messages = pull(names["subscriber"], names["reader"], 2)
    assert sorted(json.loads(m.data)["publish"]["name"] for m in messages) == ["temp", "temperature"]
    assert {m.attributes["device_id"] for m in messages} == {"photon-1"}
    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "pubsub")["counters"])["delivered"] >= 2 and c, what="counters"
    )
    assert counters["delivered"] == 2  # what it left alone (sent first) is not counted
