"""Broker accounts: how fast a key becomes a login and a revoked key is cut off, and a full re-sync at scale.

Key creation goes through the API and waits for the broker's account (dynamic security); its baseline, in
the same run, is creating a device: a write of the same size that does not touch the broker. Revocation
is timed from the DELETE to the connected client's disconnect. The full sync is what a reconnect costs
(a broker restart) with KEYS keys, as /healthz reports it.
"""

from __future__ import annotations

import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho

from bench.common import percentile, save, start_orchestrator
from tests.support.orchestrator import RunningOrchestrator
from tests.support.waiting import wait_for

APP = "bench"
KEYS = 1_000
SAMPLES = 200  # keys and devices timed side by side (interleaved), after the first KEYS - SAMPLES keys
REVOCATIONS = 20


def timed(orch: RunningOrchestrator, method: str, path: str, **kwargs: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    response = orch.call(method, path, **kwargs)
    return time.perf_counter() - started, response


def connect(port: int, key: str) -> tuple[paho.Client, threading.Event]:
    gone = threading.Event()
    client = paho.Client(client_id=f"bench-{time.monotonic_ns()}", protocol=paho.MQTTv5)
    client.username_pw_set(".".join(key.split(".")[:2]), key)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    client.on_disconnect = lambda *args: gone.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert connected.wait(10)
    return client, gone


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        orch = start_orchestrator(Path(folder) / "orchestrator")
        try:
            return measure(orch)
        finally:
            orch.stop()


def measure(orch: RunningOrchestrator) -> dict[str, Any]:
    orch.create_application(APP)
    keys_path = f"/api/v1/applications/{APP}/keys"
    for _ in range(KEYS - SAMPLES):
        orch.call("POST", keys_path, 201, json={"scopes": ["messages:read"]})
    key_seconds, device_seconds, keys = [], [], []
    for n in range(SAMPLES):
        seconds, response = timed(orch, "POST", keys_path, json={"scopes": ["messages:read"]})
        key_seconds.append(seconds)
        keys.append(response.json()["key"])
        seconds, _ = timed(orch, "POST", f"/api/v1/applications/{APP}/devices", json={"device_id": f"dev-{n}"})
        device_seconds.append(seconds)

    revocation_seconds = []
    for key in keys[:REVOCATIONS]:
        client, gone = connect(orch.broker_port, key)
        started = time.perf_counter()
        orch.call("DELETE", f"{keys_path}/{'.'.join(key.split('.')[:2])}", 204)
        assert gone.wait(10), "the revoked key's connection was not closed"
        revocation_seconds.append(time.perf_counter() - started)
        client.loop_stop()

    def synced_at() -> str | None:
        return httpx.get(f"{orch.url}/healthz", timeout=5).json()["broker_details"]["accounts"]["synced_at"]

    before = synced_at()
    os.kill(int((orch.data_dir / "mosquitto" / "mosquitto.pid").read_text()), signal.SIGKILL)
    wait_for(lambda: synced_at() != before, 60, what="the accounts to be synced after the broker's restart")
    details = httpx.get(f"{orch.url}/healthz", timeout=5).json()["broker_details"]["accounts"]

    result = {
        "keys": KEYS,
        "key_create_ms": {"p50": 1000 * statistics.median(key_seconds), "p99": 1000 * percentile(key_seconds, 0.99)},
        "device_create_ms": {
            "p50": 1000 * statistics.median(device_seconds),
            "p99": 1000 * percentile(device_seconds, 0.99),
        },
        "key_vs_device_create_p50": statistics.median(key_seconds) / statistics.median(device_seconds),
        "revoked_connection_closed_ms": {
            "p50": 1000 * statistics.median(revocation_seconds),
            "max": 1000 * max(revocation_seconds),
        },
        "full_sync_after_restart": {"seconds": details["sync_seconds"], "clients": details["clients"]},
    }
    save("accounts", result)
    print(result)
    return result


if __name__ == "__main__":
    run()
