"""Control plane: 500 integrations on the process runtime (an idle no-op worker each): time to create them,
time to reconcile all after an orchestrator crash and restart (adopting every worker), and API latency
p50/p99 under concurrent requests."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from bench.common import percentile, save, start_orchestrator
from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import RunningOrchestrator
from tests.support.waiting import wait_for

APP = "fleet"
COUNT = int(os.environ.get("BENCH_INTEGRATIONS", "500"))
REQUESTS = 2000
CONCURRENCY = 32

NOOP_TEMPLATE = """\
id: bench-noop
name: Idle worker (benchmarks)
description: Does nothing until stopped.
version: 1.0.0
image:
  repository: iot-orchestrator/noop
  tag: 0.1.0
  python_module: worker_sdk.noop
resources:
  memory_mb: 32
  cpus: 0.1
"""


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(samples, 0.5) * 1000, 1), "p99": round(percentile(samples, 0.99) * 1000, 1)}


def _mixed_request(n: int) -> tuple[str, str]:
    """What users do most: read one integration, list devices, and now and then list all integrations."""
    if n % 10 == 0:
        return "list_integrations", f"/api/v1/applications/{APP}/integrations?limit=1000"  # all 500, as before paging
    if n % 2:
        return "get_integration", f"/api/v1/applications/{APP}/integrations/noop-{random.randrange(COUNT)}"
    return "list_devices", f"/api/v1/applications/{APP}/devices?limit=100"


def _health_request(n: int) -> tuple[str, str]:
    """The baseline: the cheapest route of the same server (no database, no authentication)."""
    return "healthz", "/healthz"


async def _api_latency(orch: RunningOrchestrator, choose: Callable[[int], tuple[str, str]]) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {orch.token}"}
    samples: dict[str, list[float]] = {}
    # aiohttp, not httpx: httpx's connection pool costs ~4 ms of client CPU per request at this concurrency,
    # which made the client, not the server, the bottleneck.
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(orch.url, headers=headers, connector=connector, raise_for_status=True) as client:

        async def one(n: int) -> None:
            kind, path = choose(n)
            started = time.perf_counter()
            async with client.get(path) as response:
                await response.read()
            samples.setdefault(kind, []).append(time.perf_counter() - started)

        semaphore = asyncio.Semaphore(CONCURRENCY)

        async def limited(n: int) -> None:
            async with semaphore:
                await one(n)

        started = time.perf_counter()
        await asyncio.gather(*(limited(n) for n in range(REQUESTS)))
        elapsed = time.perf_counter() - started
    return {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "requests_per_s": round(REQUESTS / elapsed),
        **{kind: _ms(values) for kind, values in samples.items()},
    }


def _pids(orch: RunningOrchestrator) -> dict[str, list[int]]:
    items = orch.call("GET", f"/api/v1/applications/{APP}/integrations?limit=1000", 200).json()["items"]
    return {item["id"]: (item["status"]["handle"] or {}).get("pids", []) for item in items}


def run() -> dict[str, Any]:
    """Measure; returns the results (also saved under bench/results/)."""
    with tempfile.TemporaryDirectory() as tmp:
        templates = Path(tmp) / "templates"
        shutil.copytree(PROJECT_ROOT / "integration_templates", templates)
        (templates / "bench-noop.yaml").write_text(NOOP_TEMPLATE)
        orch = start_orchestrator(Path(tmp) / "o", ORCH_TEMPLATES_DIR=str(templates))
        try:
            orch.create_application(APP)
            for n in range(100):
                orch.create_device(APP, f"dev-{n}")
            create_samples = []
            started = time.perf_counter()
            for n in range(COUNT):
                began = time.perf_counter()
                orch.create_integration(APP, id=f"noop-{n}", template_id="bench-noop", config={})
                create_samples.append(time.perf_counter() - began)
            created_in = time.perf_counter() - started
            before = wait_for(lambda: (p := _pids(orch)) and all(p.values()) and p, 120, what="every worker started")
            baseline = asyncio.run(_api_latency(orch, _health_request))
            latency = asyncio.run(_api_latency(orch, _mixed_request))

            orch.stop(signal.SIGKILL)  # a crash: the workers keep running
            restarted = time.perf_counter()
            orch.start(timeout=120)
            health = wait_for(
                lambda: (h := httpx.get(f"{orch.url}/healthz").json())["reconciler"]["passes"] >= 1 and h,
                120,
                interval=0.05,
                what="the first reconcile pass",
            )
            reconciled_in = time.perf_counter() - restarted
            after = _pids(orch)
            adopted = sum(1 for name, pids in before.items() if after.get(name) == pids)
        finally:
            orch.stop(timeout=300)
    result = {
        "integrations": COUNT,
        "create_all_s": round(created_in, 1),
        "create_one_ms": _ms(create_samples),
        "restart_to_first_pass_done_s": round(reconciled_in, 2),
        "first_pass_s": round(health["reconciler"]["last_pass_seconds"], 2),
        "adopted": adopted,
        "api": latency,
        "api_baseline_healthz": baseline,
        "get_integration_p50_vs_healthz": round(latency["get_integration"]["p50"] / baseline["healthz"]["p50"], 1),
    }
    path = save("control_plane", result)
    print(
        f"control plane: {COUNT} integrations created in {created_in:.1f} s; after a crash, restart to all "
        f"reconciled {reconciled_in:.2f} s (pass {result['first_pass_s']} s), {adopted}/{COUNT} adopted; "
        f"API {latency['requests_per_s']} req/s, get p50/p99 {latency['get_integration']} ms "
        f"(healthz alone {baseline['healthz']} ms) -> {path}"
    )
    return result


if __name__ == "__main__":
    run()
