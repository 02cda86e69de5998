"""A paho-mqtt (1.x) test client that collects what it receives."""

from __future__ import annotations

import json
import queue
import uuid
from typing import Any

import paho.mqtt.client as paho

from .waiting import wait_for


class MqttProbe:
    """Connects to the broker with a key (user = key id, password = key) and records messages."""

    def __init__(self, url: str, username: str | None, password: str | None, client_id: str | None = None) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        self.client = paho.Client(client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}", protocol=paho.MQTTv311)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.connack: list[int] = []
        self.client.on_connect = lambda _c, _u, _f, rc: self.connack.append(rc)
        self.client.connect(host, int(port))
        self.client.loop_start()
        wait_for(lambda: self.connack, 10, what="MQTT CONNACK")

    @property
    def refused(self) -> bool:
        return self.connack[0] != 0

    def subscribe(self, topic: str) -> None:
        result, _mid = self.client.subscribe(topic, qos=1)
        assert result == 0

    def publish(self, topic: str, payload: bytes | str | dict[str, Any]) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(10)

    def collect(self, count: int, timeout: float = 20.0, topic_suffix: str = "") -> list[tuple[str, Any]]:
        """Wait until `count` messages (ending with topic_suffix) arrived; returns them with parsed JSON."""

        def drain() -> bool:
            while True:
                try:
                    self.seen.append(self.messages.get_nowait())
                except queue.Empty:
                    break
            return len(self.matching(topic_suffix)) >= count

        wait_for(drain, timeout, what=f"{count} MQTT messages on *{topic_suffix}")
        return self.matching(topic_suffix)

    def matching(self, topic_suffix: str) -> list[tuple[str, Any]]:
        found = []
        for topic, payload in self.seen:
            if topic.endswith(topic_suffix):
                try:
                    found.append((topic, json.loads(payload)))
                except ValueError:
                    found.append((topic, payload))
        return found

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
