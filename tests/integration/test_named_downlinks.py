"""Named downlinks (events for the device, as Particle sends a webhook's answer as `hook-response/temp/0`): delivered
on `down/deliver` at once, in order, without waiting for an uplink, and never again; unnamed ones keep class A."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.waiting import wait_for

APP = "named-app"
DEVICE = "dev1"
TOPIC = f"v3/{APP}/devices/{DEVICE}"
DOWNLINKS = f"/api/v1/applications/{APP}/devices/{DEVICE}/downlinks"
pytestmark = pytest.mark.usefixtures("both_databases")  # every test on SQLite and on PostgreSQL


@pytest.fixture
def device(orchestrator: RunningOrchestrator) -> MqttProbe:
    """A registered device, and an MQTT client with a device's and a reader's scopes, subscribed to its topics."""
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, DEVICE)
    key = orchestrator.create_key(APP, "uplinks:write", "downlinks:write", "messages:read")
    client = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    client.subscribe(f"{TOPIC}/#")
    return client


def named(name: str, payload: str = "AQ==") -> dict[str, Any]:
    return {"f_port": 1, "frm_payload": payload, "name": name}


def delivered(device: MqttProbe, count: int) -> list[dict[str, Any]]:
    """The first `count` downlinks the device got on `down/deliver`, waiting for them."""
    return [body for _, body in device.collect(count, topic_suffix="/down/deliver")][:count]


def test_named_downlinks_are_delivered_at_once_in_order_and_only_once(
    orchestrator: RunningOrchestrator, device: MqttProbe
) -> None:
    # Over MQTT: two parts of a webhook's answer and an unnamed downlink, no uplink sent.
    unnamed = {"f_port": 2, "frm_payload": "Ag=="}
    device.publish(
        f"{TOPIC}/down/push",
        {"downlinks": [named("hook-response/temp/0", "AA=="), named("hook-response/temp/1", "AQ=="), unnamed]},
    )
    first = delivered(device, 2)
    assert [item["name"] for item in first] == ["hook-response/temp/0", "hook-response/temp/1"]
    assert [item["frm_payload"] for item in first] == ["AA==", "AQ=="]
    assert all(item["id"] and f"down:{item['id']}" in item["correlation_ids"] for item in first)

    # Over HTTP: the answer names it by id, and the device gets it at once on MQTT too.
    pushed = orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": [named("hook-error/temp/0")]}).json()
    assert [item["name"] for item in pushed["downlinks"]] == ["hook-error/temp/0"]
    third = delivered(device, 3)[2]
    assert third["id"] == pushed["downlinks"][0]["id"] and third["name"] == "hook-error/temp/0"

    # Each one as a class-A delivery is: queued, delivered, sent (in this order), with its own correlation id.
    device.collect(3, topic_suffix="/down/sent")
    lifecycle = [
        (topic.removeprefix(f"{TOPIC}/"), body["correlation_ids"])
        for topic, body in device.matching("")
        if topic.removeprefix(f"{TOPIC}/") in ("down/queued", "down/deliver", "down/sent")
    ]
    for item in (*first, third):
        steps = [step for step, ids in lifecycle if f"down:{item['id']}" in ids]
        assert steps == ["down/queued", "down/deliver", "down/sent"], item["name"]

    # Only the unnamed downlink waits in the queue, and goes out with the next uplink, class A.
    queue = orchestrator.call("GET", DOWNLINKS, 200).json()["downlinks"]
    assert [(item.get("name"), item["frm_payload"]) for item in queue] == [(None, "Ag==")]
    assert orchestrator.uplink(APP, DEVICE, {"f_port": 1})["downlink"]["frm_payload"] == "Ag=="
    assert orchestrator.uplink(APP, DEVICE, {"f_port": 1})["downlink"] is None  # named ones never go out again

    # The log publishes in order: once this last one arrived, everything before it had.
    orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": [named("sync/0")]})
    every = delivered(device, 5)
    assert len(device.matching("/down/deliver")) == 5
    assert [item.get("name") for item in every] == [
        "hook-response/temp/0",
        "hook-response/temp/1",
        "hook-error/temp/0",
        None,
        "sync/0",
    ]

    # The event log and the event stream show them like any other delivery.
    history = orchestrator.call(
        "GET",
        f"/api/v1/applications/{APP}/events/history",
        200,
        params={"type": "downlink.deliver", "order": "asc", "device_id": DEVICE},
    ).json()["items"]
    assert [item["data"] for item in history] == every
    assert [event["data"] for event in read_stream(orchestrator, 5, "downlink.deliver")] == every


def test_replace_delivers_the_named_ones_and_replaces_the_queue_with_the_rest(
    orchestrator: RunningOrchestrator, device: MqttProbe
) -> None:
    # A full queue does not hold named downlinks back: they are not queued.
    full = [{"f_port": 2, "frm_payload": "Ag==", "correlation_ids": [f"old:{n}"]} for n in range(16)]
    orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": full})
    orchestrator.call("POST", DOWNLINKS, 422, json={"downlinks": [{"f_port": 2, "frm_payload": "Ag=="}]})
    parts = [named(f"hook-response/big/{n}") for n in range(16)]
    orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": parts})
    assert [item["name"] for item in delivered(device, 16)] == [f"hook-response/big/{n}" for n in range(16)]

    # down/replace: the named one is delivered at once, the unnamed one takes the queue's place.
    body = {"downlinks": [named("hook-response/temp/0"), {"f_port": 3, "frm_payload": "Aw=="}]}
    orchestrator.call("POST", f"{DOWNLINKS}?replace=true", 201, json=body)
    assert delivered(device, 17)[16]["name"] == "hook-response/temp/0"
    queue = orchestrator.call("GET", DOWNLINKS, 200).json()["downlinks"]
    assert [(item.get("name"), item["frm_payload"]) for item in queue] == [(None, "Aw==")]

    # Over MQTT, only named ones: delivered, and the queue is left empty.
    device.publish(f"{TOPIC}/down/replace", {"downlinks": [named("hook-error/temp/0")]})
    assert delivered(device, 18)[17]["name"] == "hook-error/temp/0"
    wait_for(lambda: orchestrator.call("GET", DOWNLINKS, 200).json()["downlinks"] == [], what="an emptied queue")
    assert orchestrator.uplink(APP, DEVICE, {"f_port": 1})["downlink"] is None

    # A confirmed named downlink the device nacks goes out again at once (with a new id), not with an uplink.
    confirmed = {**named("hook-response/door/0"), "confirmed": True}
    sent = orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": [confirmed]}).json()["downlinks"][0]
    reports = f"/api/v1/applications/{APP}/devices/{DEVICE}/reports"
    orchestrator.call("POST", f"{reports}/downlink-nack", 201, json={"id": sent["id"]})
    first, again = delivered(device, 20)[18:]
    assert first["id"] == sent["id"] and again["name"] == "hook-response/door/0" and again["id"] != sent["id"]
    assert orchestrator.call("POST", f"{reports}/downlink-ack", 201, json={"id": again["id"]}).json()["downlink_ack"]
    assert orchestrator.call("GET", DOWNLINKS, 200).json()["downlinks"] == []


def test_a_bad_name_is_refused_naming_it(orchestrator: RunningOrchestrator, device: MqttProbe) -> None:
    for bad in ("", "temp reading", "x" * 256, "température"):
        body = {"downlinks": [named(bad)]}
        problems = orchestrator.call("POST", DOWNLINKS, 422, json=body).json()["errors"]
        assert [p["field"] for p in problems] == ["downlinks.0.name"], bad
        assert "letters, digits" in problems[0]["message"]
    orchestrator.call(
        "POST", DOWNLINKS, 201, json={"downlinks": [named("a" * 255), named("dev/hook-response/x:1.2_3-4")]}
    )

    device.publish(f"{TOPIC}/down/push", {"downlinks": [named("hook response")]})
    # Refused over HTTP (four) or MQTT, each is a down/failed event naming why.
    failed = device.collect(5, topic_suffix="/down/failed")[4][1]["downlink_failed"]
    assert (
        "downlinks.0.name" in failed["error"]["message"]
        and failed["downlink"]["downlinks"][0]["name"] == "hook response"
    )
    # Only the two good ones, of the HTTP push, were delivered.
    orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": [named("sync/0")]})
    assert [item["name"] for item in delivered(device, 3)] == ["a" * 255, "dev/hook-response/x:1.2_3-4", "sync/0"]
    assert len(device.matching("/down/deliver")) == 3


def read_stream(orchestrator: RunningOrchestrator, count: int, prefix: str) -> list[dict[str, Any]]:
    """The first `count` events under `prefix` of the application's SSE stream, from the start of the log."""
    from httpx_sse import connect_sse

    headers = {"Authorization": f"Bearer {orchestrator.token}", "Last-Event-ID": "0"}
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=orchestrator.url, timeout=20) as client,
        connect_sse(client, "GET", f"/api/v1/applications/{APP}/events?prefix={prefix}", headers=headers) as source,
    ):
        for sse in source.iter_sse():
            events.append({"event": sse.event, "id": sse.id, "data": sse.json()})
            if len(events) >= count:
                break
    return events


def test_a_nack_that_finds_the_queue_full_is_refused_naming_the_queue_and_can_come_again(
    orchestrator: RunningOrchestrator, device: MqttProbe
) -> None:
    confirmed = {"f_port": 2, "frm_payload": "AQ==", "confirmed": True}
    orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": [confirmed]})
    sent = orchestrator.uplink(APP, DEVICE, {"f_port": 1})["downlink"]
    full = [{"f_port": 3, "frm_payload": "Aw=="} for _ in range(16)]
    orchestrator.call("POST", DOWNLINKS, 201, json={"downlinks": full})
    reports = f"/api/v1/applications/{APP}/devices/{DEVICE}/reports"
    refused = orchestrator.call("POST", f"{reports}/downlink-nack", 422, json={"id": sent["id"]}).json()
    assert refused["errors"][0]["field"] == "downlinks" and "at most 16" in refused["errors"][0]["message"]
    orchestrator.call("POST", f"{DOWNLINKS}?replace=true", 201, json={"downlinks": []})  # the queue empties
    orchestrator.call("POST", f"{reports}/downlink-nack", 201, json={"id": sent["id"]})  # nothing was lost
    queue = orchestrator.call("GET", DOWNLINKS, 200).json()["downlinks"]
    assert [(item["frm_payload"], item["confirmed"]) for item in queue] == [("AQ==", True)]
