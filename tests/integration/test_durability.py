"""Nothing acknowledged is lost: the broker killed with SIGKILL in the middle of 10,000 uplinks."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import paho.mqtt.client as paho
import pytest

from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "durable"
COUNT = 10_000
RATE = 1_000  # uplinks per second from the device: about what one device connection carries in practice


class DevicePublisher:
    """A device sending uplinks on `up/push` with QoS 1 that reconnects, and resends, after a broker crash."""

    def __init__(self, orch: RunningOrchestrator, key: str) -> None:
        self.acknowledged: set[int] = set()
        self.client = paho.Client(client_id="durable-device", protocol=paho.MQTTv311, clean_session=False)
        self.client.username_pw_set(".".join(key.split(".")[:2]), key)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.on_publish = lambda _client, _data, mid: self.acknowledged.add(mid)
        self.client.connect("127.0.0.1", orch.broker_port)
        self.client.loop_start()

    def publish(self, count: int) -> None:
        started = time.monotonic()
        for n in range(count):
            delay = started + n / RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = json.dumps({"f_port": 1, "decoded_payload": {"n": n}})
            self.client.publish(f"v3/{APP}/devices/dev-1/up/push", body, qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def send_over_http(orch: RunningOrchestrator, count: int, sent: list[int]) -> None:
    """POST uplinks from 8 clients at once, as fast as the API answers."""
    url = f"{orch.url}/api/v1/applications/{APP}/devices/dev-1/uplinks"
    headers = {"Authorization": f"Bearer {orch.token}"}

    def send(numbers: range) -> None:
        with httpx.Client(headers=headers, timeout=30) as client:
            for n in numbers:
                response = client.post(url, json={"f_port": 1, "decoded_payload": {"n": n}})
                assert response.status_code == 201, response.text
                sent.append(n)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, [range(start, count, 8) for start in range(8)]))


def kill_broker(orch: RunningOrchestrator) -> None:
    pid = int((orch.data_dir / "mosquitto" / "mosquitto.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def delivered(sink: HttpSink) -> Counter[int]:
    return Counter(request.json()["uplink_message"]["decoded_payload"]["n"] for request in sink.accepted())


def prepare(orch: RunningOrchestrator, sink: HttpSink, paused: bool) -> str:
    orch.create_application(APP)
    orch.create_device(APP, "dev-1")
    key = orch.create_key(APP, "uplinks:write")
    orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    orch.wait_state(APP, "hook", "running")
    if paused:
        orch.call("POST", f"/api/v1/applications/{APP}/integrations/hook/disable", 200)
        orch.wait_state(APP, "hook", "stopped")
    return key


def expect_every_uplink(orch: RunningOrchestrator, sink: HttpSink, paused: bool) -> None:
    if paused:
        time.sleep(1)  # the uplinks wait in the broker (and the log) while the integration is paused
        orch.call("POST", f"/api/v1/applications/{APP}/integrations/hook/enable", 200)
    try:
        wait_for(lambda: len(delivered(sink)) == COUNT, timeout=180, interval=1, what=f"{COUNT} distinct uplinks")
    finally:
        counts = delivered(sink)
        duplicates = sum(count - 1 for count in counts.values())
        print(f"\ndistinct {len(counts)} of {COUNT}, duplicates {duplicates}")
    assert orch.integration(APP, "hook")["counters"]["failed"] == 0


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_broker_killed_during_mqtt_uplinks_loses_nothing(
    orchestrator: RunningOrchestrator, sink: HttpSink, paused: bool
) -> None:
    key = prepare(orchestrator, sink, paused)
    device = DevicePublisher(orchestrator, key)
    sender = threading.Thread(target=device.publish, args=(COUNT,))
    sender.start()
    # SIGKILL once the broker has acknowledged about a third: some uplinks are only in its memory.
    wait_for(lambda: len(device.acknowledged) >= COUNT // 3, timeout=60, what="a third of the uplinks acknowledged")
    kill_broker(orchestrator)
    sender.join(60)
    wait_for(lambda: len(device.acknowledged) == COUNT, timeout=120, interval=0.5, what="every uplink acknowledged")
    device.close()
    expect_every_uplink(orchestrator, sink, paused)


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_broker_killed_during_http_uplinks_loses_nothing(
    orchestrator: RunningOrchestrator, sink: HttpSink, paused: bool
) -> None:
    prepare(orchestrator, sink, paused)
    sent: list[int] = []
    sender = threading.Thread(target=send_over_http, args=(orchestrator, COUNT, sent))
    sender.start()
    wait_for(lambda: len(sent) >= COUNT // 3, timeout=60, what="a third of the uplinks accepted")
    kill_broker(orchestrator)
    sender.join(120)
    assert len(sent) == COUNT  # every one answered 201: logged, whatever the broker does
    expect_every_uplink(orchestrator, sink, paused)


def test_worker_killed_during_uplinks_loses_nothing_and_counts_exactly(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    prepare(orchestrator, sink, paused=False)
    sent: list[int] = []
    sender = threading.Thread(target=send_over_http, args=(orchestrator, COUNT, sent))
    sender.start()
    killed = set()
    for third in (1, 2):  # SIGKILL the worker twice while uplinks flow: deliveries in flight die with it
        wait_for(lambda t=third: len(delivered(sink)) >= COUNT * t // 3, timeout=120, what=f"{third}/3 delivered")
        pid = orchestrator.wait_state(APP, "hook", "running")["status"]["handle"]["pids"][0]
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
        wait_for(
            lambda: orchestrator.integration(APP, "hook")["status"]["handle"]["pids"][0] not in killed,
            timeout=60,
            what="a new worker",
        )
    sender.join(180)
    expect_every_uplink(orchestrator, sink, paused=False)
    # The counter counts what the workers acknowledged, each count a request the target got: never less than
    # every uplink (it counted what was reported, and lost what died with a worker), never more than the
    # target received. Copies are deliveries a killed worker made but never acknowledged, sent again; one
    # counted twice is a batch whose report reached the broker in the instant before the SIGKILL.
    wait_for(
        lambda: COUNT <= orchestrator.integration(APP, "hook")["counters"]["delivered"] <= len(sink.accepted()),
        timeout=30,
        what=f"{COUNT} <= delivered <= {len(sink.accepted())}: {orchestrator.integration(APP, 'hook')['counters']}",
    )
