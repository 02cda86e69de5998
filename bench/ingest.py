"""Ingest through the handler next to publishing straight to the integrations, in the same run.

Through the handler: a device publishes uplinks on `up/push`; the handler checks, normalizes and logs
each one, then publishes it on `up`, where the webhook integration takes it to a sink. Baseline: the
same number of already-normalized uplinks published straight on `up` (what the handler's output looks
like), so the only difference is the handler and its event log. Both are bursts of BURST uplinks,
alternated ROUNDS times; throughput is distinct uplinks at the sink over the time to the last one.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho

from bench.common import broker_password, save, start_orchestrator
from bench.webhook import Sink, uplink
from tests.support.orchestrator import RunningOrchestrator

APP = "bench"
BURST = 20_000
ROUNDS = 3


class Burst:
    """A paho publisher (QoS 1, 1,000 in flight) for one kind of message."""

    def __init__(self, port: int, username: str, password: str, topic: str, through_handler: bool) -> None:
        self.topic = topic
        self.through_handler = through_handler
        self.client = paho.Client(client_id=f"bench-{time.monotonic_ns()}", protocol=paho.MQTTv311)
        self.client.username_pw_set(username, password)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def body(self, n: int) -> bytes:
        if not self.through_handler:
            return uplink(n)  # normalized, as the handler would publish it
        decoded = {"n": n, "t": 21.5, "sent": time.monotonic()}
        return json.dumps({"f_port": 1, "frm_payload": "AQIDBA==", "decoded_payload": decoded}).encode()

    def send(self, count: int, offset: int) -> float:
        started = time.monotonic()
        infos = [self.client.publish(self.topic, self.body(offset + n), qos=1) for n in range(count)]
        for info in infos:
            info.wait_for_publish(300)
        return started

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(sink: Sink, burst: Burst, offset: int, processes: dict[str, int]) -> dict[str, Any]:
    sink.reset()
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    started = burst.send(BURST, offset)
    stats = sink.wait(BURST, timeout=300)
    time.sleep(0.5)  # acknowledgements and reports still in flight
    delivered = stats["count"] - stats["duplicates"]
    return {
        "throughput_msg_s": round(delivered / (stats["last"] - started)) if delivered else 0,
        "lost": BURST - delivered,
        "duplicates": stats["duplicates"],
        "cpu_us_per_msg": {
            name: round((cpu_seconds(pid) - before[name]) / BURST * 1e6) for name, pid in processes.items()
        },
    }


def device_key(orch: RunningOrchestrator) -> str:
    return orch.create_key(APP, "uplinks:write")


def warm_up(sink: Sink, burst: Burst) -> None:
    """Send until the integration delivers (its worker may still be connecting), then settle."""
    sink.reset()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sink.stats()["count"] == 0:
        burst.send(1, 10_000_000)
        time.sleep(0.5)
    time.sleep(1)


def run() -> dict[str, Any]:
    """Measure both paths, alternating; returns the results (also saved under bench/results/)."""
    sink = Sink()
    result: dict[str, Any] = {"burst": BURST, "rounds": ROUNDS, "direct": [], "through_handler": []}
    with tempfile.TemporaryDirectory() as tmp:
        orch = start_orchestrator(Path(tmp) / "o")
        try:
            password = broker_password(orch)
            orch.create_application(APP)
            orch.create_device(APP, "dev-1")
            key = device_key(orch)
            orch.create_integration(APP, id="bench-hook", template_id="webhook", config={"url": f"{sink.url}/ingest"})
            orch.wait_state(APP, "bench-hook", "running", timeout=60)
            direct = Burst(orch.broker_port, "orchestrator", password, f"v3/{APP}/devices/dev-1/up", False)
            handler = Burst(
                orch.broker_port, ".".join(key.split(".")[:2]), key, f"v3/{APP}/devices/dev-1/up/push", True
            )
            warm_up(sink, handler)
            assert orch.process is not None
            processes = {
                "orchestrator": orch.process.pid,
                "worker": orch.integration(APP, "bench-hook")["status"]["handle"]["pids"][0],
                "broker": int((orch.data_dir / "mosquitto" / "mosquitto.pid").read_text()),
                "sink": sink.process.pid,
            }
            for round_number in range(ROUNDS):
                offset = round_number * 2 * BURST
                for name, burst, start in (("direct", direct, offset), ("through_handler", handler, offset + BURST)):
                    outcome = measure(sink, burst, start, processes)
                    result[name].append(outcome)
                    print(f"  round {round_number + 1} {name}: {outcome}", flush=True)
            direct.close()
            handler.close()
            result["health"] = orch.call("GET", "/healthz").json()
        finally:
            orch.stop()
            sink.stop()
    ratios = [
        h["throughput_msg_s"] / max(1, d["throughput_msg_s"])
        for d, h in zip(result["direct"], result["through_handler"], strict=True)
    ]
    result["ratios"] = [round(ratio, 2) for ratio in ratios]
    result["ratio_median"] = round(statistics.median(ratios), 2)
    path = save("ingest", result)
    print(
        f"ingest: through the handler {[r['throughput_msg_s'] for r in result['through_handler']]} msg/s, "
        f"direct {[r['throughput_msg_s'] for r in result['direct']]} msg/s, ratios {result['ratios']} "
        f"(median {result['ratio_median']}), lost {[r['lost'] for r in result['through_handler']]} -> {path}"
    )
    return result


if __name__ == "__main__":
    run()
