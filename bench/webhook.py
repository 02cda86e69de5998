"""Webhook throughput and latency through the webhook integration, next to Node-RED (MQTT in -> HTTP request)
on the same broker and sink, plus the sink alone and the broker alone: all in the same run."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import paho.mqtt.client as paho

from bench.common import broker_password, percentile, save, start_orchestrator
from tests.support.orchestrator import free_port
from tests.support.waiting import wait_for

APP = "bench"
TOPIC = f"v3/{APP}/devices/dev-1/up"
BURST = 20_000
RATE = 1000
RATE_SECONDS = 10
NODE_RED = Path(__file__).parent / "node-red"


def uplink(n: int) -> bytes:
    """A normalized uplink carrying the time it was sent (time.monotonic, shared by processes)."""
    return json.dumps(
        {
            "end_device_ids": {"device_id": "dev-1", "application_ids": {"application_id": APP}},
            "correlation_ids": [f"up:{n}"],
            "received_at": "2026-01-01T00:00:00Z",
            "uplink_message": {
                "f_port": 1,
                "frm_payload": "AQIDBA==",
                "decoded_payload": {"n": n, "t": 21.5, "sent": time.monotonic()},
            },
        }
    ).encode()


class Sink:
    """bench/sink.py in its own process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", str(self.port)], cwd=Path(__file__).parent.parent
        )
        wait_for(lambda: self._up(), 20, what="the sink")

    def _up(self) -> bool:
        try:
            return httpx.get(self.url + "/stats", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def reset(self) -> None:
        httpx.post(self.url + "/reset")

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/stats", timeout=30).json()  # type: ignore[no-any-return]

    def wait(self, count: int, timeout: float = 180, quiet: float = 10) -> dict[str, Any]:
        """Stats once `count` requests arrived, or once nothing arrived for `quiet` seconds (lost messages)."""
        deadline = time.monotonic() + timeout
        last_count, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats["count"] >= count:
                return stats
            if stats["count"] != last_count:
                last_count, last_change = stats["count"], time.monotonic()
            elif time.monotonic() - last_change > quiet:
                return stats
            time.sleep(0.2)
        return self.stats()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Publisher:
    """Publishes uplinks with QoS 1 as the handler does (its broker account)."""

    def __init__(self, port: int, password: str) -> None:
        self.client = paho.Client(client_id=f"bench-pub-{time.monotonic_ns()}", protocol=paho.MQTTv311)
        self.client.username_pw_set("orchestrator", password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def burst(self, count: int, offset: int = 0) -> float:
        started = time.monotonic()
        infos = [self.client.publish(TOPIC, uplink(offset + n), qos=1) for n in range(count)]
        for info in infos:
            info.wait_for_publish(120)
        return started

    def paced(self, rate: int, seconds: int, offset: int = 0) -> None:
        started = time.monotonic()
        for n in range(rate * seconds):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.client.publish(TOPIC, uplink(offset + n), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def measure(sink: Sink, publisher: Publisher) -> dict[str, Any]:
    """Latency at a fixed rate (steady state) first, then burst throughput, through whatever consumes the topic."""
    sink.reset()
    publisher.paced(RATE, RATE_SECONDS, offset=BURST)
    stats = sink.wait(RATE * RATE_SECONDS)
    latencies = stats["latencies"] or [float("nan")]
    latency = {
        "rate_msg_s": RATE,
        "p50": round(percentile(latencies, 0.5) * 1000, 1),
        "p99": round(percentile(latencies, 0.99) * 1000, 1),
        "max": round(max(latencies) * 1000, 1),
        "lost": RATE * RATE_SECONDS - (stats["count"] - stats["duplicates"]),
    }
    sink.reset()
    started = publisher.burst(BURST)
    stats = sink.wait(BURST)
    delivered = stats["count"] - stats["duplicates"]
    return {
        "throughput_msg_s": round(delivered / (stats["last"] - started)) if delivered else 0,
        "duplicates_in_burst": stats["duplicates"],
        "lost_in_burst": BURST - delivered,
        "latency_at_rate_ms": latency,
    }


def warm_up(sink: Sink, publisher: Publisher) -> None:
    """Publish until the consumer delivers (it may still be connecting)."""
    sink.reset()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sink.stats()["count"] == 0:
        publisher.burst(1, offset=10_000_000)
        time.sleep(0.5)
    time.sleep(1)


def start_node_red(directory: Path, broker_port: int, password: str, sink_url: str) -> subprocess.Popen[bytes]:
    """Node-RED with one flow: MQTT in (QoS 1, same topic) -> HTTP request (POST, keep-alive) -> the sink."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (directory / "settings.js").write_text(
        f"module.exports = {{ uiHost: '127.0.0.1', uiPort: {port}, httpAdminRoot: false, httpNodeRoot: false,\n"
        "  credentialSecret: false, flowFile: 'flows.json', logging: { console: { level: 'warn' } },\n"
        "  telemetry: { enabled: false }, diagnostics: { enabled: false } };\n"
    )
    flows = [
        {"id": "tab", "type": "tab", "label": "bench"},
        {
            "id": "broker",
            "type": "mqtt-broker",
            "name": "local",
            "broker": "127.0.0.1",
            "port": str(broker_port),
            "clientid": "node-red-bench",
            "autoConnect": True,
            "usetls": False,
            "protocolVersion": "4",
            "keepalive": "60",
            "cleansession": True,
        },
        {
            "id": "in",
            "type": "mqtt in",
            "z": "tab",
            "name": "uplinks",
            "topic": f"v3/{APP}/devices/+/up",
            "qos": "1",
            "datatype": "utf8",
            "broker": "broker",
            "nl": False,
            "rap": True,
            "rh": 0,
            "inputs": 0,
            "wires": [["out"]],
        },
        {
            "id": "out",
            "type": "http request",
            "z": "tab",
            "name": "to sink",
            "method": "POST",
            "ret": "txt",
            "paytoqs": "ignore",
            "url": f"{sink_url}/ingest",
            "tls": "",
            "persist": True,
            "proxy": "",
            "insecureHTTPParser": False,
            "authType": "",
            "senderr": False,
            "headers": [],
            "wires": [[]],
        },
    ]
    (directory / "flows.json").write_text(json.dumps(flows))
    (directory / "flows_cred.json").write_text(json.dumps({"broker": {"user": "orchestrator", "password": password}}))
    red = NODE_RED / "node_modules" / "node-red" / "red.js"
    return subprocess.Popen(
        ["node", str(red), "--userDir", str(directory), "--settings", str(directory / "settings.js")],
        stdout=(directory / "node-red.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _sink_alone(url: str, count: int, concurrency: int = 64) -> float:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        bodies = [uplink(n) for n in range(count)]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for body in bodies:
            queue.put_nowait(body)

        async def worker() -> None:
            while not queue.empty():
                async with session.post(url + "/ingest", data=queue.get_nowait()) as response:
                    await response.read()

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.monotonic() - started)


def broker_alone(port: int, password: str, count: int) -> float:
    """Messages per second from a publisher to a QoS 1 subscriber, nothing else."""
    received = []
    subscriber = paho.Client(client_id="bench-sub", protocol=paho.MQTTv311)
    subscriber.username_pw_set("orchestrator", password)
    subscriber.on_message = lambda _c, _u, message: received.append(time.monotonic())
    subscriber.connect("127.0.0.1", port)
    subscriber.subscribe("bench/alone", qos=1)
    subscriber.loop_start()
    time.sleep(0.5)
    publisher = paho.Client(client_id="bench-pub-alone", protocol=paho.MQTTv311)
    publisher.username_pw_set("orchestrator", password)
    publisher.max_inflight_messages_set(1000)
    publisher.connect("127.0.0.1", port)
    publisher.loop_start()
    started = time.monotonic()
    infos = [publisher.publish("bench/alone", uplink(n), qos=1) for n in range(count)]
    for info in infos:
        info.wait_for_publish(120)
    wait_for(lambda: len(received) >= count, 120, what="the broker-only messages")
    rate = count / (received[count - 1] - started)
    for client in (publisher, subscriber):
        client.loop_stop()
        client.disconnect()
    return rate


def run() -> dict[str, Any]:
    """Measure everything; returns the results (also saved under bench/results/)."""
    if not (NODE_RED / "node_modules" / "node-red").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_RED, check=True)
    sink = Sink()
    result: dict[str, Any] = {"burst": BURST}
    with tempfile.TemporaryDirectory() as tmp:
        orch = start_orchestrator(Path(tmp) / "o")
        password = broker_password(orch)
        try:
            result["sink_alone_req_s"] = round(asyncio.run(_sink_alone(sink.url, BURST)))
            result["broker_alone_msg_s"] = round(broker_alone(orch.broker_port, password, BURST))
            orch.create_application(APP)
            orch.create_device(APP, "dev-1")
            orch.create_integration(APP, id="bench-hook", template_id="webhook", config={"url": f"{sink.url}/ingest"})
            orch.wait_state(APP, "bench-hook", "running", timeout=60)
            publisher = Publisher(orch.broker_port, password)
            warm_up(sink, publisher)
            print("  integration ...", flush=True)
            result["integration"] = measure(sink, publisher)
            print(f"  integration: {result['integration']}", flush=True)
            orch.call("DELETE", f"/api/v1/applications/{APP}/integrations/bench-hook", 204)
            node_red = start_node_red(Path(tmp) / "node-red", orch.broker_port, password, sink.url)
            try:
                warm_up(sink, publisher)
                print("  node-red ...", flush=True)
                result["node_red"] = measure(sink, publisher)
                print(f"  node-red: {result['node_red']}", flush=True)
                result["node_red_version"] = json.loads(
                    (NODE_RED / "node_modules" / "node-red" / "package.json").read_text()
                )["version"]
            finally:
                node_red.kill()
                node_red.wait(10)
            publisher.close()
        finally:
            orch.stop()
            sink.stop()
    ours, theirs = result["integration"], result["node_red"]
    result["throughput_ratio_vs_node_red"] = round(ours["throughput_msg_s"] / max(1, theirs["throughput_msg_s"]), 2)
    path = save("webhook", result)
    print(
        f"webhook: integration {ours['throughput_msg_s']} msg/s (p50 {ours['latency_at_rate_ms']['p50']} ms, "
        f"p99 {ours['latency_at_rate_ms']['p99']} ms), Node-RED {theirs['throughput_msg_s']} msg/s "
        f"(p50 {theirs['latency_at_rate_ms']['p50']} ms, p99 {theirs['latency_at_rate_ms']['p99']} ms), ratio "
        f"{result['throughput_ratio_vs_node_red']}; sink alone {result['sink_alone_req_s']} req/s, broker alone "
        f"{result['broker_alone_msg_s']} msg/s -> {path}"
    )
    return result


if __name__ == "__main__":
    run()
