"""Particle's model: a device publishes named events (over MQTT and HTTP); they flow through the handler, the log
and the stream like uplinks, and a webhook written for Particle renders them with its PARTICLE_* variables."""

from __future__ import annotations

import json
import threading
import time

import httpx
from httpx_sse import connect_sse

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "photon-app"


def test_named_events_reach_a_particle_style_webhook(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "photon-1")
    key = orchestrator.create_key(APP, "uplinks:write", "messages:read")
    device = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    device.subscribe(f"v3/{APP}/devices/photon-1/publish")
    config = {
        "url": sink.url + "/{{PARTICLE_EVENT_NAME}}",
        "events": "publish",
        "event_prefix": "temp",  # Particle's event prefix: door/open and hum are left alone
        "body_format": "form",
        "body": '{"event": "{{PARTICLE_EVENT_NAME}}", "data": "{{{PARTICLE_EVENT_VALUE}}}", "coreid": '
        '"{{PARTICLE_DEVICE_ID}}", "published_at": "{{PARTICLE_PUBLISHED_AT}}"}',
    }
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config=config)
    orchestrator.wait_state(APP, "hook", "running")

    device.publish(f"v3/{APP}/devices/photon-1/publish/push", {"name": "temperature", "data": "21.5"})
    device.publish(f"v3/{APP}/devices/photon-1/publish/push", {"name": "temp/kitchen", "data": "19"})
    device.publish(f"v3/{APP}/devices/photon-1/publish/push", {"name": "hum", "data": "40"})
    path = f"/api/v1/applications/{APP}/devices/photon-1/reports/publish"
    answer = orchestrator.call("POST", path, 201, json={"name": "door/open", "data": "", "ttl": 30}).json()
    assert answer["publish"]["name"] == "door/open" and answer["correlation_ids"][0].startswith("pub:")
    refused = orchestrator.call("POST", path, 422, json={"name": "has space", "data": "1"}).json()
    assert refused["errors"][0]["field"] == "name"

    found = device.collect(4, topic_suffix="/photon-1/publish")
    published = {body["publish"]["name"]: body["publish"] for _, body in found}
    first = published["temperature"]  # MQTT and HTTP are two ways in: no order between them
    assert (first["name"], first["data"], first["ttl"]) == ("temperature", "21.5", 60) and first["published_at"]
    received = wait_for(lambda: len(sink.accepted()) >= 2 and sink.accepted(), what="two webhook requests")
    by_path = {request.path: request for request in received}
    assert set(by_path) == {"/temperature", "/temp%2Fkitchen"}
    form = dict(item.split("=", 1) for item in by_path["/temperature"].body.decode().split("&"))
    assert form["event"] == "temperature" and form["data"] == "21.5" and form["coreid"] == "photon-1"
    assert form["published_at"] == first["published_at"].replace(":", "%3A")
    history = orchestrator.call("GET", f"/api/v1/applications/{APP}/events/history?type=publish", 200).json()
    names = sorted(item["data"]["publish"]["name"] for item in history["items"])
    assert names == ["door/open", "hum", "temp/kitchen", "temperature"]  # all logged; the webhook chose
    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "hook")["counters"])["delivered"] >= 2 and c, what="counters"
    )
    assert counters["delivered"] == 2 and counters["failed"] == 0  # what it left alone is not counted
    device.close()


def test_a_client_built_for_particles_stream_reads_named_events(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "photon-1")
    orchestrator.create_device(APP, "photon-2")
    key = orchestrator.create_key(APP, "messages:read", "uplinks:write")
    path = f"/api/v1/applications/{APP}/devices/{{}}/reports/publish"
    got: list[tuple[str, dict[str, object]]] = []

    def read(url: str, count: int) -> None:
        with httpx.Client(base_url=orchestrator.url, timeout=30) as client, connect_sse(client, "GET", url) as source:
            for item in source.iter_sse():
                got.append((item.event, json.loads(item.data)))
                if len(got) >= count:
                    return

    reader = threading.Thread(target=read, args=(f"/v1/devices/photon-1/events/temp?access_token={key}", 2))
    reader.start()
    time.sleep(1.0)  # the stream is open
    for device, name, data in [
        ("photon-1", "temperature", "21.5"),
        ("photon-1", "hum", "40"),
        ("photon-2", "temperature", "5"),
        ("photon-1", "temp/kitchen", "19"),
    ]:
        orchestrator.call("POST", path.format(device), 201, json={"name": name, "data": data})
    reader.join(30)
    assert [(event, body["data"], body["coreid"]) for event, body in got] == [
        ("temperature", "21.5", "photon-1"),
        ("temp/kitchen", "19", "photon-1"),
    ]
    assert got[0][1]["ttl"] == 60 and str(got[0][1]["published_at"]).endswith("Z")

    admin = httpx.get(f"{orchestrator.url}/v1/events?access_token={orchestrator.token}", timeout=10)
    assert admin.status_code == 401  # the admin token never goes in a URL
    assert httpx.get(f"{orchestrator.url}/v1/events", timeout=10).status_code == 401
    too_far = httpx.get(
        f"{orchestrator.url}/v1/events?access_token={key}", headers={"Last-Event-ID": "9" * 25}, timeout=10
    )
    assert too_far.status_code == 422 and "last-event-id" in too_far.text
