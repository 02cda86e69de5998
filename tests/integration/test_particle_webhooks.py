"""A webhook written for Particle: named events under its prefix fire it with Particle's variables and default
form fields; the device gets the answer back at once in 512-byte parts, and an error answer on its error topic."""

from __future__ import annotations

import base64
import json
import threading
from urllib.parse import parse_qs

import httpx
from httpx_sse import connect_sse

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink, Received
from tests.support.waiting import wait_for

APP = "photon-hooks"
LONG_ANSWER = "".join(f"line {number:04d} of the forecast\n" for number in range(45)).encode()  # 1,125 bytes


def test_a_particle_webhook_fires_for_its_prefix_and_answers_the_device(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "photon-1")
    key = orchestrator.create_key(APP, "uplinks:write")
    device = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    device.subscribe(f"v3/{APP}/devices/photon-1/down/deliver")
    seen: list[Received] = []
    lock = threading.Lock()

    def answer(request: Received) -> tuple[int, dict[str, str], bytes]:
        with lock:
            seen.append(request)
        if request.path.endswith("/tempx"):
            return 400, {"Content-Type": "application/json"}, b'{"error": "reading out of range"}'
        if request.path.endswith("/temperature"):
            return 200, {"Content-Type": "application/json"}, b'{"forecast": {"max": 25.5}, "ok": true}'
        return 200, {"Content-Type": "text/plain"}, LONG_ANSWER

    sink.responder = answer
    config = {
        "url": sink.url + "/hook/{{PARTICLE_EVENT_NAME}}",
        "events": "publish",
        "event_prefix": "temp",
        "body_format": "none",
        "particle_defaults": True,  # Particle's form fields, as a webhook without noDefaults sends them
        "headers": {
            "X-Spark-Core": "{{SPARK_CORE_ID}}",
            "X-Reading": "{{#if PARTICLE_EVENT_VALUE}}{{PARTICLE_EVENT_VALUE}}{{else}}none{{/if}}",
        },
        "response_topic": "{{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}",
        # Particle's responseTemplate sees the JSON answer's keys; the answers that are not JSON go as they came.
        "response_template": "{{#if ok}}max {{forecast.max}} for {{PARTICLE_EVENT_NAME}}"
        "{{else}}{{{response.body}}}{{/if}}",
        "error_response_topic": "{{PARTICLE_DEVICE_ID}}/hook-error/{{PARTICLE_EVENT_NAME}}",
        "retry_max_duration_seconds": 5,
    }
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config=config)
    orchestrator.wait_state(APP, "hook", "running")

    for name, data in [("temp", "21.5"), ("tempx", "99"), ("hum", "40"), ("temperature", "20")]:
        device.publish(f"v3/{APP}/devices/photon-1/publish/push", {"name": name, "data": data})

    wait_for(lambda: len(seen) >= 3, what="the webhook's three requests")
    requests = {request.path: request for request in seen}
    assert set(requests) == {"/hook/temp", "/hook/tempx", "/hook/temperature"}  # hum is not under the prefix
    form = {name: values[0] for name, values in parse_qs(requests["/hook/temp"].body.decode()).items()}
    assert set(form) == {"event", "data", "published_at", "coreid"}
    assert (form["event"], form["data"], form["coreid"]) == ("temp", "21.5", "photon-1")
    assert form["published_at"].endswith("Z")
    assert requests["/hook/temp"].headers["content-type"] == "application/x-www-form-urlencoded"
    assert requests["/hook/tempx"].headers["x-spark-core"] == "photon-1"
    assert requests["/hook/tempx"].headers["x-reading"] == "99"

    # No uplink needed: the answer comes back at once, in parts, and the error on the error topic.
    delivered = [body for _, body in device.collect(5, topic_suffix="/down/deliver")]
    named = {body["name"]: base64.b64decode(body["frm_payload"]) for body in delivered}
    assert sorted(named) == [
        "photon-1/hook-error/tempx/0",
        "photon-1/hook-response/temp/0",
        "photon-1/hook-response/temp/1",
        "photon-1/hook-response/temp/2",
        "photon-1/hook-response/temperature/0",
    ]
    parts = [named[f"photon-1/hook-response/temp/{index}"] for index in range(3)]
    assert [len(part) for part in parts] == [512, 512, len(LONG_ANSWER) - 1024]
    assert b"".join(parts) == LONG_ANSWER
    assert named["photon-1/hook-error/tempx/0"] == b'HTTP 400: {"error": "reading out of range"}'
    assert named["photon-1/hook-response/temperature/0"] == b"max 25.5 for temperature"
    order = [body["name"] for body in delivered if "hook-response/temp/" in body["name"]]
    assert order == sorted(order)  # parts arrive in order

    # As on Particle, the answers show on the stream too (`particle subscribe hook-response`), from the log.
    reader = orchestrator.create_key(APP, "messages:read")
    stream = f"{orchestrator.url}/v1/devices/photon-1/events/photon-1/hook-response/temp/?access_token={reader}"
    shown: list[tuple[str, str]] = []
    with httpx.Client(timeout=10) as client, connect_sse(client, "GET", stream, headers={"Last-Event-ID": "0"}) as sse:
        for item in sse.iter_sse():
            shown.append((item.event, json.loads(item.data)["data"]))
            if len(shown) == 3:
                break
    assert [name for name, _ in shown] == [f"photon-1/hook-response/temp/{index}" for index in range(3)]
    assert "".join(data for _, data in shown).encode() == LONG_ANSWER

    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "hook")["counters"])["failed"] >= 1 and c, what="counters"
    )
    assert counters["delivered"] == 2 and counters["failed"] == 1
    letters = orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook/dead-letters", 200).json()
    assert [item["message"]["publish"]["name"] for item in letters["items"]] == ["tempx"]  # kept, to replay
    device.close()


def test_what_goes_back_to_the_device_holds_no_secret_and_no_internals(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    """A target echoing the request's credentials, an answer too long to go back, a target that never answers:
    the device gets masked text, nothing, and "no answer" (no URL); the user gets events that say why."""
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "photon-1")
    key = orchestrator.create_key(APP, "uplinks:write", "messages:read")
    device = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    device.subscribe(f"v3/{APP}/devices/photon-1/down/deliver")

    def echo(request: Received) -> tuple[int, dict[str, str], bytes]:
        if request.path.endswith("/long"):
            return 200, {}, b"x" * 600
        return 200, {}, f"you sent {request.headers['authorization']}".encode()

    sink.responder = echo
    topics = {
        "response_topic": "{{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}",
        "error_response_topic": "{{PARTICLE_DEVICE_ID}}/hook-error/{{PARTICLE_EVENT_NAME}}",
    }
    common = {"events": "publish", "auth_username": "user", "auth_password": "hunter22-secret", **topics}
    orchestrator.create_integration(
        APP,
        id="echo",
        template_id="webhook",
        config={"url": sink.url + "/{{PARTICLE_EVENT_NAME}}", "event_prefix": "echo", **common},
    )
    orchestrator.create_integration(
        APP,
        id="short",
        template_id="webhook",
        config={"url": sink.url + "/long", "event_prefix": "long", "response_too_long": "refuse", **common},
    )
    closed = HttpSink()
    closed.close()  # nothing listens there any more
    orchestrator.create_integration(
        APP,
        id="gone",
        template_id="webhook",
        config={"url": closed.url + "/x?api_key=k", "event_prefix": "gone", "retry_max_duration_seconds": 2, **common},
    )
    for integration in ("echo", "short", "gone"):
        orchestrator.wait_state(APP, integration, "running")
    for name in ("echo", "long", "gone"):
        device.publish(f"v3/{APP}/devices/photon-1/publish/push", {"name": name, "data": "1"})

    delivered = [body for _, body in device.collect(2, topic_suffix="/down/deliver")]
    named = {body["name"]: base64.b64decode(body["frm_payload"]).decode() for body in delivered}
    echoed = named["photon-1/hook-response/echo/0"]
    assert echoed.startswith("you sent ") and "dXNlcjpodW50ZXIy" not in echoed and "hunter22" not in echoed
    assert named["photon-1/hook-error/gone/0"] == "not delivered: no answer from the endpoint"
    assert set(named) == {"photon-1/hook-response/echo/0", "photon-1/hook-error/gone/0"}  # nothing for "long"
    activity = orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/short/activity", 200).json()
    assert any("600 bytes; at most 512" in item["message"] for item in activity if item["kind"] == "error")
    device.close()


def test_the_test_button_sends_a_named_event_the_webhook_selects(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    """A Particle-style webhook takes only `temp…` events of photon-2: its test sends one, and it is delivered."""
    orchestrator.create_application(APP)
    for device in ("photon-1", "photon-2"):
        orchestrator.create_device(APP, device)
    config = {
        "url": sink.url + "/hook/{{PARTICLE_EVENT_NAME}}/{{PARTICLE_DEVICE_ID}}",
        "events": "publish",
        "event_prefix": "temp",
        "devices": "photon-2",
        "body_format": "none",
        "particle_defaults": True,
        "response_topic": "{{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}",
    }
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config=config)
    orchestrator.wait_state(APP, "hook", "running")
    base = f"/api/v1/applications/{APP}/integrations/hook/test"
    outcome = orchestrator.call("POST", base, 200, json={}).json()
    assert outcome["outcome"] == "delivered", outcome
    assert [request.path for request in sink.accepted()] == ["/hook/temp/photon-2"]
    form = parse_qs(sink.accepted()[0].body.decode())
    assert form["data"] == ['{"temperature":21.5,"humidity":48}'] and form["coreid"] == ["photon-2"]
    named = orchestrator.call("POST", base, 200, json={"event_name": "temp/kitchen"}).json()
    assert named["outcome"] == "delivered" and sink.accepted()[-1].path == "/hook/temp%2Fkitchen/photon-2"
    refused = orchestrator.call("POST", base, 422, json={"event_name": "has space"}).json()
    assert refused["errors"][0]["field"] == "event_name" and "Particle's rule" in refused["errors"][0]["message"]
    # A sample the integration would leave alone is refused, saying why, instead of waiting for nothing.
    other = orchestrator.call("POST", base, 422, json={"event_name": "humidity"}).json()["errors"][0]
    assert other["field"] == "event_name" and "'temp'" in other["message"]
    elsewhere = orchestrator.call("POST", base, 422, json={"device_id": "photon-1"}).json()["errors"][0]
    assert elsewhere["field"] == "device_id" and "photon-2" in elsewhere["message"]
    # The device published nothing: the samples' answers are not sent to it.
    history = f"/api/v1/applications/{APP}/events/history?type=downlink"
    assert orchestrator.call("GET", history, 200).json()["items"] == []
