"""Azure fleet footprint: 1,000 devices sending one uplink each through the azure-iot-hub integration, with the
connection pool bounded at 100 and, for contrast, at 1,000 (one connection per device): memory, threads and
open hub connections of the worker, against the TLS Mosquitto stand-in for the hub."""

from __future__ import annotations

import base64
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import broker_password, mosquitto_binary, save, start_orchestrator
from bench.webhook import Publisher
from tests.support.iothub import (
    HUB_HOST,
    MQTT_PORT,
    POLICY,
    HubBroker,
    RegistryContractDouble,
    hub_client,
)
from tests.support.tls import make_certificates

APP = "fleet"
DEVICES = int(os.environ.get("BENCH_AZURE_DEVICES", "1000"))
UPLINK_DEADLINE_S = 300  # one connection per device may never get there; report how far it got


def _hub_connections(pid: int) -> int:
    """Established TCP connections of a process to the hub's MQTT port."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            # remote port in hex, state 01 = established
            if fields[2].endswith(f":{MQTT_PORT:04X}") and fields[3] == "01" and fields[9] in inodes:
                count += 1
    return count


def _delivered(received: set[str], prefix: str) -> int:
    return len([device for device in received if device.startswith(prefix)])


def _status(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            values[key] = int(value.split()[0])
    return {"rss_mib": round(values["VmRSS"] / 1024, 1), "threads": values["Threads"]}


def _run(limit: int, hub: dict[str, Any]) -> dict[str, Any]:
    received: set[str] = set()
    watcher = hub_client(hub["ca"], f"bench-telemetry-{limit}")
    watcher.on_message = lambda _c, _u, message: received.add(message.topic.split("/")[1])
    watcher.subscribe("devices/+/messages/events/#", qos=1)
    with tempfile.TemporaryDirectory() as tmp:
        orch = start_orchestrator(Path(tmp) / "o")
        password = broker_password(orch)
        try:
            orch.create_application(APP)
            for n in range(DEVICES):
                orch.create_device(APP, f"dev-{n}")
            prefix = f"b{limit}-"
            started = time.monotonic()
            orch.create_integration(
                APP,
                id="azure",
                template_id="azure-iot-hub",
                config={
                    "hub_hostname": HUB_HOST,
                    "policy_name": POLICY,
                    "policy_key": hub["key"],
                    "registry_url": hub["registry"].url,
                    "ca_pem": hub["ca"].read_text(),
                    "device_id_prefix": prefix,
                    "max_connections": limit,
                    "report_decoded_payload": False,
                },
            )
            orch.wait_state(APP, "azure", "running", timeout=300)
            synced = time.monotonic() - started
            pid = orch.integration(APP, "azure")["status"]["handle"]["pids"][0]
            idle = _status(pid)
            publisher = Publisher(orch.broker_port, password)
            started = time.monotonic()
            for n in range(DEVICES):
                body = (
                    b'{"end_device_ids":{"device_id":"dev-%d","application_ids":{"application_id":"fleet"}},'
                    b'"correlation_ids":["up:%d"],"received_at":"2026-01-01T00:00:00Z",'
                    b'"uplink_message":{"f_port":1,"frm_payload":"AQ=="}}'
                ) % (n, n)
                publisher.client.publish(f"v3/{APP}/devices/dev-{n}/up", body, qos=1)
            deadline = time.monotonic() + UPLINK_DEADLINE_S
            while _delivered(received, prefix) < DEVICES and time.monotonic() < deadline:
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            busy = {
                **_status(pid),
                "hub_connections": _hub_connections(pid),
                "devices_delivered": _delivered(received, prefix),
            }
            publisher.close()
        finally:
            orch.stop()
    watcher.loop_stop()
    watcher.disconnect()
    return {
        "pool_limit": limit,
        "registry_sync_s": round(synced, 1),
        "idle": idle,
        "after_uplinks": busy,
        "uplinks_s": round(elapsed, 1),
    }


def run() -> dict[str, Any]:
    """Measure with a bounded pool and with one connection per device."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca, cert, key = make_certificates(directory)
        broker = HubBroker(mosquitto_binary(), directory, ca, cert, key)
        policy_key = base64.b64encode(os.urandom(32)).decode()
        registry = RegistryContractDouble(policy_key, cert, key)
        hub = {"ca": ca, "key": policy_key, "registry": registry}
        try:
            limits = [int(x) for x in os.environ.get("BENCH_AZURE_POOLS", f"100,{DEVICES}").split(",")]
            results = []
            for limit in limits:
                results.append(_run(limit, hub))
                print(f"  pool {limit}: {results[-1]}", flush=True)
        finally:
            registry.stop()
            broker.stop()
    result = {"devices": DEVICES, "runs": results}
    path = save("azure_fleet", result)
    for item in results:
        print(
            f"azure fleet, pool {item['pool_limit']}: {item['after_uplinks']} after {DEVICES} devices "
            f"({item['uplinks_s']} s for one uplink each; registry sync {item['registry_sync_s']} s)"
        )
    print(f"-> {path}")
    return result


if __name__ == "__main__":
    run()
