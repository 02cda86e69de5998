"""Pub/Sub throughput: uplinks per second through the integration to Google's emulator, next to the raw
publisher client publishing the same messages in the same run. Both are timed until a subscriber on the
topic has received every message."""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from bench.common import save, start_orchestrator
from tests.support.pubsub import PubSubEmulator, find_launcher

APP = "bench"
PROJECT = "bench-project"
MESSAGES = 5000


def _uplink(app: str, n: int) -> bytes:
    return json.dumps(
        {
            "end_device_ids": {"device_id": "dev-1", "application_ids": {"application_id": app}},
            "correlation_ids": [f"up:{uuid.uuid4().hex}"],
            "received_at": "2026-01-01T00:00:00Z",
            "uplink_message": {"f_port": 1, "frm_payload": "AQIDBA==", "decoded_payload": {"n": n, "t": 21.5}},
        }
    ).encode()


class Counter:
    """A streaming-pull subscriber that counts messages and notes when the last one arrived."""

    def __init__(self, subscriber: Any, subscription: str, expected: int) -> None:
        self.expected, self.count, self.done_at = expected, 0, 0.0
        self.done = threading.Event()
        self._lock = threading.Lock()
        flow = __import__("google.cloud.pubsub_v1", fromlist=["types"]).types.FlowControl(max_messages=5000)
        self.future = subscriber.subscribe(subscription, self._on_message, flow_control=flow)

    def _on_message(self, message: Any) -> None:
        message.ack()
        with self._lock:
            self.count += 1
            if self.count == self.expected:
                self.done_at = time.perf_counter()
                self.done.set()


def _fresh(publisher: Any, subscriber: Any, tag: str) -> tuple[str, str]:
    topic = publisher.topic_path(PROJECT, f"up-{tag}")
    publisher.create_topic(request={"name": topic})
    subscription = f"projects/{PROJECT}/subscriptions/count-{tag}"
    subscriber.create_subscription(request={"name": subscription, "topic": topic, "ack_deadline_seconds": 60})
    return topic, subscription


def _raw_client(emulator: PubSubEmulator, payloads: list[bytes]) -> float:
    from google.cloud import pubsub_v1

    publisher, subscriber = emulator.clients()
    raw = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(max_messages=500, max_bytes=1_000_000, max_latency=0.01)
    )
    topic, subscription = _fresh(publisher, subscriber, "raw-" + uuid.uuid4().hex[:6])
    counter = Counter(subscriber, subscription, len(payloads))
    started = time.perf_counter()
    futures = [raw.publish(topic, data, application_id=APP, device_id="dev-1", event="uplink") for data in payloads]
    for future in futures:
        future.result()
    counter.done.wait(300)
    counter.future.cancel()
    return len(payloads) / (counter.done_at - started)


def _integration(emulator: PubSubEmulator, payloads: list[bytes]) -> float:
    publisher, subscriber = emulator.clients()
    tag = "int-" + uuid.uuid4().hex[:6]
    topic, subscription = _fresh(publisher, subscriber, tag)
    with tempfile.TemporaryDirectory() as tmp:
        orch = start_orchestrator(Path(tmp))
        try:
            orch.create_application(APP)
            orch.create_device(APP, "dev-1")
            orch.create_integration(
                APP,
                id="pubsub",
                template_id="google-pubsub",
                config={
                    "project_id": PROJECT,
                    "topic": topic.rsplit("/", 1)[1],
                    "emulator_host": emulator.host,
                    "events": "uplink",
                },
            )
            orch.wait_state(APP, "pubsub", "running", timeout=60)
            counter = Counter(subscriber, subscription, len(payloads))
            # Publish as the handler does (QoS 1 on the uplink topic), with the handler's broker account.
            client = paho.Client(client_id="bench-publisher", protocol=paho.MQTTv311)
            client.username_pw_set("orchestrator", (Path(tmp) / "broker.password").read_text().strip())
            client.max_inflight_messages_set(1000)
            client.connect("127.0.0.1", orch.broker_port)
            client.loop_start()
            started = time.perf_counter()
            infos = [client.publish(f"v3/{APP}/devices/dev-1/up", data, qos=1) for data in payloads]
            for info in infos:
                info.wait_for_publish(60)
            counter.done.wait(300)
            counter.future.cancel()
            client.loop_stop()
            client.disconnect()
            return len(payloads) / (counter.done_at - started)
        finally:
            orch.stop()


def run(messages: int = MESSAGES) -> dict[str, Any]:
    """Measure both; returns the results (also saved under bench/results/)."""
    launcher = find_launcher()
    assert launcher, "the Pub/Sub emulator is not installed"
    payloads = [_uplink(APP, n) for n in range(messages)]
    with tempfile.TemporaryDirectory() as tmp:
        emulator = PubSubEmulator(launcher, Path(tmp))
        try:
            _raw_client(emulator, payloads[:500])  # warm the emulator's JIT before measuring
            raw = _raw_client(emulator, payloads)
            through = _integration(emulator, payloads)
        finally:
            emulator.stop()
    result = {
        "messages": messages,
        "raw_client_msg_s": round(raw),
        "integration_msg_s": round(through),
        "ratio": round(through / raw, 2),
    }
    path = save("pubsub", result)
    print(f"pub/sub: integration {through:.0f} msg/s, raw client {raw:.0f} msg/s, ratio {through / raw:.2f} -> {path}")
    return result


if __name__ == "__main__":
    run()
