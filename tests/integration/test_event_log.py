"""The durable event log: resume across restarts, history, refused uplinks as events, a log that cannot be written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "log-app"


def setup_app(orch: RunningOrchestrator) -> str:
    """An application with one device; returns a device key (uplinks:write, messages:read)."""
    orch.create_application(APP)
    orch.create_device(APP, "dev-1")
    return orch.create_key(APP, "uplinks:write", "messages:read")


def read_stream(orch: RunningOrchestrator, last_id: str | None, count: int, prefix: str = "") -> list[dict[str, Any]]:
    """`count` events from the SSE stream (resuming after `last_id`), as {event, id, data}."""
    from httpx_sse import connect_sse

    headers = {"Authorization": f"Bearer {orch.token}"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=orch.url, timeout=20) as client,
        connect_sse(client, "GET", f"/api/v1/applications/{APP}/events?prefix={prefix}", headers=headers) as source,
    ):
        for sse in source.iter_sse():
            events.append({"event": sse.event, "id": sse.id, "data": sse.json() if sse.data else None})
            if len(events) >= count:
                break
    return events


def history(orch: RunningOrchestrator, **params: Any) -> dict[str, Any]:
    return orch.call("GET", f"/api/v1/applications/{APP}/events/history", 200, params=params).json()  # type: ignore[no-any-return]


def uplink_numbers(events: list[dict[str, Any]]) -> list[int]:
    return [event["data"]["uplink_message"]["decoded_payload"]["n"] for event in events]


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_a_stream_resumes_across_an_orchestrator_restart_with_exactly_what_it_missed(
    tmp_path: Path, mosquitto: str, how: str
) -> None:
    orch = RunningOrchestrator(tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto).start()
    try:
        setup_app(orch)
        for n in range(2):
            orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": n}})
        seen = read_stream(orch, "0", 3)  # from the start of the log: device.create, then uplinks 0 and 1
        assert [e["event"] for e in seen] == ["device.create", "uplink", "uplink"]
        last_seen = seen[-1]["id"]
        for n in range(2, 5):  # missed while disconnected
            orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": n}})
        orch.stop(signal.SIGKILL if how == "sigkill" else signal.SIGINT)
        orch.start()
        for n in range(5, 7):  # missed: after the restart
            orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": n}})
        resumed = read_stream(orch, last_seen, 5)
        assert [e["event"] for e in resumed] == ["uplink"] * 5  # no stream.gap, nothing else
        assert uplink_numbers(resumed) == [2, 3, 4, 5, 6]
        assert [int(e["id"]) for e in resumed] == sorted(int(e["id"]) for e in resumed)
        assert int(resumed[0]["id"]) > int(last_seen)
    finally:
        orch.stop()


def test_history_pages_through_10000_events(orchestrator: RunningOrchestrator) -> None:
    key = setup_app(orchestrator)
    orchestrator.create_device(APP, "dev-2")
    device = paho.Client(client_id="history-device", protocol=paho.MQTTv311)
    device.username_pw_set(".".join(key.split(".")[:2]), key)
    device.max_inflight_messages_set(500)
    device.connect("127.0.0.1", orchestrator.broker_port)
    device.loop_start()
    infos = [
        device.publish(
            f"v3/{APP}/devices/dev-{1 + n % 2}/up/push", json.dumps({"f_port": 1, "decoded_payload": {"n": n}}), qos=1
        )
        for n in range(10_000)
    ]
    for info in infos:
        info.wait_for_publish(60)
    device.loop_stop()
    device.disconnect()
    wait_for(
        lambda: (
            history(orchestrator, type="uplink", limit=1)["items"][0]["data"]["uplink_message"]["decoded_payload"]["n"]
            == 9_999
        ),
        timeout=60,
        what="the last uplink in the log",
    )

    # Newest first, page by page with before_id, while `more` says so.
    pages, before = [], None
    while True:
        params = {"type": "uplink", "limit": 1000, **({"before_id": before} if before else {})}
        page = history(orchestrator, **params)
        pages.append(page["items"])
        if not page["more"]:
            break
        before = page["items"][-1]["id"]
    items = [item for page in pages for item in page]
    assert len(pages) == 10 and len(items) == 10_000
    ids = [item["id"] for item in items]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 10_000
    assert sorted(uplink_numbers(items)) == list(range(10_000))
    assert {item["name"] for item in items} == {"uplink"}

    # Oldest first from an id, one device, and a time window.
    first = history(orchestrator, order="asc", type="uplink", limit=5)["items"]
    assert uplink_numbers(first) == [0, 1, 2, 3, 4]
    after = history(orchestrator, order="asc", type="uplink", after_id=first[2]["id"], limit=2)["items"]
    assert uplink_numbers(after) == [3, 4]
    dev2 = history(orchestrator, device_id="dev-2", type="uplink", limit=1000)["items"]
    assert len(dev2) == 1000 and all(item["device_id"] == "dev-2" for item in dev2)
    assert all(n % 2 == 1 for n in uplink_numbers(dev2))
    assert history(orchestrator, until="2000-01-01T00:00:00Z")["items"] == []
    assert len(history(orchestrator, since=items[0]["time"], type="uplink")["items"]) >= 1
    assert history(orchestrator, type="device.", order="asc")["items"][0]["name"] == "device.create"

    bad = orchestrator.call("GET", f"/api/v1/applications/{APP}/events/history?limit=0", 422).json()
    assert bad["errors"][0]["field"] == "query.limit"
    orchestrator.call("GET", "/api/v1/applications/nope/events/history", 404)


def test_refused_uplinks_always_become_error_events(orchestrator: RunningOrchestrator) -> None:
    key = setup_app(orchestrator)
    device = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    deep = b'{"decoded_payload": ' + b'{"a": ' * 10_000 + b"1" + b"}" * 10_000 + b"}"
    device.publish(f"v3/{APP}/devices/dev-1/up/push", deep)
    device.publish(f"v3/{APP}/devices//up/push", {"f_port": 1})
    nested_33 = {"decoded_payload": json.loads('{"a": ' * 32 + "1" + "}" * 32)}
    device.publish(f"v3/{APP}/devices/dev-1/up/push", nested_33)
    # Over HTTP the same refusals are a 422 naming the problem, and an event too.
    answer = orchestrator.call("POST", f"/api/v1/applications/{APP}/devices/dev-1/uplinks", 422, content=deep)
    assert "nested" in answer.json()["detail"]
    device.close()

    def errors() -> list[dict[str, Any]]:
        return history(orchestrator, type="uplink.error", order="asc")["items"]

    found = wait_for(lambda: len(errors()) >= 4 and errors(), what="four uplink.error events")
    # MQTT and HTTP are two ways in: their order is not the order the test sent them in.
    messages = [item["data"]["error"]["message"] for item in found]
    assert sum("nested more than 32 levels deep" in message for message in messages) == 2  # MQTT and HTTP
    assert sum("nested 33 levels deep; at most 32" in message for message in messages) == 1
    no_device = [item for item in found if "names no device" in item["data"]["error"]["message"]]
    assert len(no_device) == 1 and no_device[0]["data"]["end_device_ids"]["device_id"] == ""
    assert httpx.get(orchestrator.url + "/healthz", timeout=5).status_code == 200  # and the handler goes on
    orchestrator.uplink(APP, "dev-1", {"f_port": 1})


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs for the database: filling it up is a real disk-full."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True)
    if result.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test (run as root): {result.stderr.decode()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_log_that_cannot_be_written_is_reported_and_loses_nothing(
    tmp_path: Path, mosquitto: str, sink: HttpSink, small_disk: Path
) -> None:
    orch = RunningOrchestrator(
        tmp_path / "o",
        ORCH_BROKER__MOSQUITTO_BINARY=mosquitto,
        ORCH_DATABASE_URL=f"sqlite:///{small_disk / 'orchestrator.db'}",
    ).start()
    try:
        key = setup_app(orch)
        orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
        orch.wait_state(APP, "hook", "running")
        filler = small_disk / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True)

        device = MqttProbe(orch.mqtt_url, ".".join(key.split(".")[:2]), key)
        for n in range(20):
            device.publish(f"v3/{APP}/devices/dev-1/up/push", {"f_port": 1, "decoded_payload": {"n": n}})

        def reported() -> dict[str, Any] | None:
            answer = httpx.get(orch.url + "/healthz", timeout=5)
            return answer.json() if answer.status_code == 503 else None

        health = wait_for(reported, timeout=30, what="/healthz to report the event log")
        assert health["event_log"]["status"] == "failing"
        assert "full" in health["event_log"]["error"]
        refused = orch.call("POST", f"/api/v1/applications/{APP}/devices/dev-1/uplinks", 503, json={"f_port": 1})
        assert "full" in refused.json()["detail"] and refused.headers["retry-after"] == "5"
        time.sleep(2)
        assert sink.accepted() == []  # nothing was acknowledged and then dropped: it waits

        os.remove(filler)
        received = wait_for(lambda: len(sink.accepted()) >= 20 and sink.accepted(), timeout=60, what="the uplinks")
        assert sorted(r.json()["uplink_message"]["decoded_payload"]["n"] for r in received) == list(range(20))
        wait_for(lambda: httpx.get(orch.url + "/healthz", timeout=5).status_code == 200, what="healthy again")
        device.close()
    finally:
        orch.stop()


def test_renamed_settings_are_named_at_start(tmp_path: Path, mosquitto: str) -> None:
    orch = RunningOrchestrator(
        tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_HANDLER__KEEPALIVE_SECONDS="5"
    ).start()
    try:
        assert (
            "ORCH_HANDLER__KEEPALIVE_SECONDS is no longer read; use ORCH_EVENTS__KEEPALIVE_SECONDS" in orch.log_tail()
        )
    finally:
        orch.stop()
