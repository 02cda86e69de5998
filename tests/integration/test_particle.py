"""Particle's model: a device publishes named events (over MQTT and HTTP); they flow through the handler, the log
and the stream like uplinks, and a webhook written for Particle renders them with its PARTICLE_* variables."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
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
    garbage = httpx.get(f"{orchestrator.url}/v1/events?access_token={key}", headers={"Last-Event-ID": "abc"})
    assert garbage.status_code == 422 and "digits" in garbage.text
    unknown = httpx.get(f"{orchestrator.url}/v1/devices/nope/events/temp?access_token={key}", timeout=10)
    assert unknown.status_code == 404 and "nope" in unknown.text
    admin_in_url = httpx.get(f"{orchestrator.url}/v1/events?access_token={orchestrator.token}", timeout=10)
    assert "in a URL" in admin_in_url.json()["detail"]
    token = orchestrator.call("POST", f"/api/v1/applications/{APP}/events/tokens", 201).json()["token"]
    with httpx.stream("GET", f"{orchestrator.url}/v1/events/temp?stream_token={token}", timeout=10) as opened:
        assert opened.status_code == 200
        assert next(opened.iter_text()).startswith(": ok")


# Node's own fetch reads the stream and prints it as it comes; an answer other than 200 is printed too.
NODE_READER = """
const [url, lastEventId] = process.argv.slice(1);
const headers = lastEventId ? {"Last-Event-ID": lastEventId} : {};
fetch(url, {headers, signal: AbortSignal.timeout(20000)}).then(async response => {
  if (response.status !== 200) process.stdout.write(`status ${response.status}\\n`);
  const decoder = new TextDecoder();
  for await (const chunk of response.body) process.stdout.write(decoder.decode(chunk, {stream: true}));
}).catch(error => { console.error(String(error)); process.exit(1); });
"""


class SseProgram:
    """An SSE client outside Python (curl or Node) in a subprocess, and the raw text it printed so far."""

    def __init__(self, client: str, url: str, last_event_id: str | None = None) -> None:
        if client == "curl":
            resume = ["-H", f"Last-Event-ID: {last_event_id}"] if last_event_id else []
            command = ["curl", "-sN", "--max-time", "20", *resume, url]
        else:
            command = ["node", "-e", NODE_READER, url, *([last_event_id] if last_event_id else [])]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE)
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")

    def _read(self) -> None:
        assert self.process.stdout is not None
        while chunk := os.read(self.process.stdout.fileno(), 65536):  # what has come so far, not waiting for more
            self.chunks.append(chunk)

    def events(self) -> list[dict[str, str]]:
        """The events printed so far, each as its fields (`event`, `data`, `id`); comments left out."""
        found = []
        for block in self.text.replace("\r\n", "\n").split("\n\n")[:-1]:  # the last one may be incomplete
            fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
            if fields:
                found.append(fields)
        return found

    def wait_until_open(self) -> None:
        wait_for(lambda: ": ok" in self.text, what="the stream to open (its `: ok` comment)")

    def wait_for_events(self, count: int) -> list[dict[str, str]]:
        wait_for(lambda: len(self.events()) >= count, what=f"{count} events; got: {self.text!r}")
        return self.events()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self._reader.join(10)


@pytest.fixture(params=["curl", "node"])
def sse_client(request: pytest.FixtureRequest) -> Iterator[str]:
    """The name of a program that reads the stream: curl, or a few lines of JavaScript on Node."""
    if shutil.which(request.param) is None:  # scripts/setup --dev installs both
        pytest.fail(f"{request.param} is not installed: run scripts/setup --dev")
    yield request.param


def test_a_non_python_client_reads_particles_stream_and_resumes_with_last_event_id(
    orchestrator: RunningOrchestrator, sse_client: str
) -> None:
    """curl or Node reading `/v1/devices/{id}/events/{prefix}` sees Particle's text, and resumes without repeats."""
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "photon-1")
    orchestrator.create_device(APP, "photon-2")
    key = orchestrator.create_key(APP, "messages:read", "uplinks:write")
    url = f"{orchestrator.url}/v1/devices/photon-1/events/temp?access_token={key}"

    def publish(device: str, name: str, data: str) -> None:
        path = f"/api/v1/applications/{APP}/devices/{device}/reports/publish"
        orchestrator.call("POST", path, 201, json={"name": name, "data": data})

    client = SseProgram(sse_client, url)
    try:
        client.wait_until_open()
        publish("photon-1", "temperature", "21.5")
        publish("photon-1", "hum", "40")  # another name
        publish("photon-2", "temperature", "5")  # another device
        publish("photon-1", "temp/kitchen", "19")
        first = client.wait_for_events(2)
    finally:
        client.stop()
    lines = client.text.replace("\r\n", "\n").split("\n")
    assert "event: temperature" in lines and "event: temp/kitchen" in lines
    assert [(item["event"], json.loads(item["data"])["data"]) for item in first] == [
        ("temperature", "21.5"),
        ("temp/kitchen", "19"),
    ]  # the stream keeps order: anything from photon-2, or named hum, would have come before temp/kitchen
    body = json.loads(first[0]["data"])
    assert list(body) == ["data", "ttl", "published_at", "coreid"]
    assert (body["data"], body["ttl"], body["coreid"]) == ("21.5", 60, "photon-1")
    assert str(body["published_at"]).endswith("Z")
    assert first[0]["id"].isdigit() and int(first[0]["id"]) < int(first[1]["id"])

    last_id = first[-1]["id"]
    publish("photon-1", "temperature", "22.0")  # while no client follows
    again = SseProgram(sse_client, url, last_event_id=last_id)
    try:
        again.wait_until_open()
        publish("photon-1", "temp/garden", "18")
        resumed = again.wait_for_events(2)
        time.sleep(0.5)  # room for a repeat to show up
    finally:
        again.stop()
    assert [(item["event"], json.loads(item["data"])["data"]) for item in again.events()] == [
        ("temperature", "22.0"),
        ("temp/garden", "18"),
    ]
    assert all(int(item["id"]) > int(last_id) for item in resumed)
