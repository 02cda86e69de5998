"""Scale-out: one webhook integration with 1, 2 and 4 replicas sharing its messages (MQTT shared
subscriptions): burst throughput of each, and how many messages arrived twice."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import broker_password, save, start_orchestrator
from bench.webhook import APP, BURST, Publisher, Sink, warm_up


def run() -> dict[str, Any]:
    """Measure; returns the results (also saved under bench/results/)."""
    sink = Sink()
    results: dict[str, Any] = {"burst": BURST, "replicas": {}}
    with tempfile.TemporaryDirectory() as tmp:
        orch = start_orchestrator(Path(tmp) / "o")
        password = broker_password(orch)
        try:
            orch.create_application(APP)
            orch.create_device(APP, "dev-1")
            publisher = Publisher(orch.broker_port, password)
            for replicas in (1, 2, 4):
                name = f"scale-{replicas}"
                orch.create_integration(
                    APP, id=name, template_id="webhook", replicas=replicas, config={"url": f"{sink.url}/ingest"}
                )
                orch.wait_state(APP, name, "running", timeout=60)
                warm_up(sink, publisher)
                sink.reset()
                started = publisher.burst(BURST)
                stats = sink.wait(BURST)
                results["replicas"][str(replicas)] = {
                    "throughput_msg_s": round(BURST / (stats["last"] - started)),
                    "received": stats["count"],
                    "duplicates": stats["duplicates"],
                }
                orch.call("DELETE", f"/api/v1/applications/{APP}/integrations/{name}", 204)
            publisher.close()
        finally:
            orch.stop()
            sink.stop()
    path = save("scale_out", results)
    print(f"scale-out: {results['replicas']} -> {path}")
    return results


if __name__ == "__main__":
    run()
