"""A paho-mqtt (1.x) test client that collects what it receives."""

from __future__ import annotations

import json
import queue
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho

from .waiting import wait_for


class MqttProbe:
    """Connects to the broker with a key (user = key id, password = key) and records messages.

    The URL picks the transport: mqtt://, mqtts:// (TLS, checked against `ca`), ws:// or wss://.
    `version=5` speaks MQTT 5, whose acknowledgements carry reason codes (135: not authorized).
    """

    def __init__(
        self,
        url: str,
        username: str | None,
        password: str | None,
        client_id: str | None = None,
        *,
        ca: Path | None = None,
        version: int = 3,
    ) -> None:
        parts = urlsplit(url)
        self.version = version
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.seen: list[tuple[str, bytes]] = []
        self.granted: dict[int, list[int]] = {}  # SUBACK reason codes by message id
        self.disconnects: list[int] = []
        self.client = paho.Client(
            client_id=client_id or f"probe-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5 if version == 5 else paho.MQTTv311,
            transport="websockets" if parts.scheme in ("ws", "wss") else "tcp",
        )
        if parts.scheme in ("mqtts", "wss"):
            self.client.tls_set(ca_certs=str(ca) if ca else None)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = lambda _c, _u, msg: self.messages.put((msg.topic, msg.payload))
        self.connack: list[int] = []
        if version == 5:
            self.client.on_connect = lambda _c, _u, _f, rc, _p=None: self.connack.append(rc.value)
            self.client.on_subscribe = lambda _c, _u, mid, codes, _p=None: self.granted.__setitem__(
                mid, [code.value for code in codes]
            )
            self.client.on_disconnect = lambda _c, _u, rc, _p=None: self.disconnects.append(getattr(rc, "value", rc))
        else:
            self.client.on_connect = lambda _c, _u, _f, rc: self.connack.append(rc)
            self.client.on_subscribe = lambda _c, _u, mid, qos: self.granted.__setitem__(mid, list(qos))
            self.client.on_disconnect = lambda _c, _u, rc: self.disconnects.append(rc)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()
        wait_for(lambda: self.connack, 10, what="MQTT CONNACK")

    @property
    def refused(self) -> bool:
        return self.connack[0] != 0

    def subscribe(self, topic: str) -> list[int]:
        """Subscribe with QoS 1; returns the SUBACK's codes (1: granted; 128 or 135: refused)."""
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == 0
        return wait_for(lambda: self.granted.get(mid), 10, what=f"SUBACK for {topic}")

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
