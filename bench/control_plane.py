"""Control plane: 1,000 integrations (500 with an idle no-op worker, process runtime) and 10,000 devices, PostgreSQL.

Measures, each next to a baseline of the same run where there is one: create and update throughput; paged API
reads at 32 in flight against `/healthz`; the reconcile pass; a crash and restart (every worker adopted); and,
with two instances on one PostgreSQL database and one external Mosquitto, the leader killed: time until the
other leads and until every integration is back with the same workers.

`BENCH_DATABASE=sqlite` measures the single-instance parts on SQLite with a managed broker (no failover).
Sizes: BENCH_INTEGRATIONS (1,000), BENCH_RUNNING (500 of them enabled), BENCH_DEVICES (10,000),
BENCH_REQUESTS (2,000 per read kind).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from cryptography.fernet import Fernet

from bench.common import mosquitto_binary, percentile, save
from orchestrator.config import PROJECT_ROOT
from tests.support.broker import ExternalBroker
from tests.support.orchestrator import POSTGRES_ENV, RunningOrchestrator, drop_databases, fresh_database
from tests.support.waiting import wait_for

APP = "fleet"
DATABASE = os.environ.get("BENCH_DATABASE", "postgres")
COUNT = int(os.environ.get("BENCH_INTEGRATIONS", "1000"))
DEVICES = int(os.environ.get("BENCH_DEVICES", "10000"))
# Enabled integrations (a worker each); the rest are created disabled (configured, no process). An idle Python
# worker takes ~31 MiB: 1,000 of them do not fit in this kind of machine's 23.5 GiB (tried: it ran out of memory).
RUNNING = min(COUNT, int(os.environ.get("BENCH_RUNNING", "500")))
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
CONCURRENCY = 32  # reads in flight
WRITE_CONCURRENCY = 8  # creates and updates in flight (each integration create starts a worker)
PAGE = 100  # what the console asks for
UPDATES = min(COUNT, 1000), min(DEVICES, 2000)  # integrations, devices updated (their names)
RECONCILE_INTERVAL = "5"  # the product's default (the tests' 1 s would make passes the main load)

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

Request = tuple[str, str, str, dict[str, Any] | None]  # kind, method, path, JSON body


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(samples, 0.5) * 1000, 1), "p99": round(percentile(samples, 0.99) * 1000, 1)}


def _pages(total: int) -> int:
    return max(1, (total + PAGE - 1) // PAGE)


READS: dict[str, Callable[[int], Request]] = {
    "healthz": lambda n: ("healthz", "GET", "/healthz", None),
    "list_integrations": lambda n: (
        "list_integrations",
        "GET",
        f"/api/v1/applications/{APP}/integrations?limit={PAGE}&offset={random.randrange(_pages(COUNT)) * PAGE}",
        None,
    ),
    "get_integration": lambda n: (
        "get_integration",
        "GET",
        f"/api/v1/applications/{APP}/integrations/noop-{random.randrange(COUNT)}",
        None,
    ),
    # There is no status route of its own: the console's integration page reads the status from the GET above
    # and polls the per-minute counters here.
    "integration_stats": lambda n: (
        "integration_stats",
        "GET",
        f"/api/v1/applications/{APP}/integrations/noop-{random.randrange(COUNT)}/stats?hours=6",
        None,
    ),
    "list_devices": lambda n: (
        "list_devices",
        "GET",
        f"/api/v1/applications/{APP}/devices?limit={PAGE}&offset={random.randrange(_pages(DEVICES)) * PAGE}",
        None,
    ),
}


async def _load(orch: RunningOrchestrator, choose: Callable[[int], Request], count: int, concurrency: int) -> dict:
    """`count` requests, `concurrency` in flight (aiohttp: httpx's pool costs ~4 ms of client CPU per request)."""
    headers = {"Authorization": f"Bearer {orch.token}"}
    samples: dict[str, list[float]] = {}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        orch.url, headers=headers, connector=connector, raise_for_status=True, timeout=timeout
    ) as client:
        semaphore = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            kind, method, path, body = choose(n)
            async with semaphore:
                started = time.perf_counter()
                async with client.request(method, path, json=body) as response:
                    await response.read()
                samples.setdefault(kind, []).append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        elapsed = time.perf_counter() - started
    result: dict[str, Any] = {"requests": count, "in_flight": concurrency, "seconds": round(elapsed, 2)}
    result["per_s"] = round(count / elapsed, 1)
    result.update({kind: _ms(values) for kind, values in samples.items()})
    return result


def load(orch: RunningOrchestrator, choose: Callable[[int], Request], count: int, concurrency: int) -> dict:
    return asyncio.run(_load(orch, choose, count, concurrency))


def _snapshot(orch: RunningOrchestrator) -> dict[str, tuple[str, list[int]]]:
    """Every integration's actual state and worker pids (pages of 1,000, the API's largest)."""
    found: dict[str, tuple[str, list[int]]] = {}
    offset = 0
    while True:
        path = f"/api/v1/applications/{APP}/integrations?limit=1000&offset={offset}"
        page = orch.call("GET", path, 200).json()
        for item in page["items"]:
            found[item["id"]] = (item["status"]["actual"], (item["status"]["handle"] or {}).get("pids", []))
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return found


def _health(orch: RunningOrchestrator) -> dict[str, Any]:
    return httpx.get(f"{orch.url}/healthz", timeout=10).json()  # type: ignore[no-any-return]


def _leading(orch: RunningOrchestrator) -> bool:
    try:
        return bool(orch.call("GET", "/api/v1/cluster").json().get("leading"))
    except httpx.HTTPError:
        return False


def _passes_at_least(orch: RunningOrchestrator, count: int) -> dict[str, Any] | None:
    try:
        health = _health(orch)
    except httpx.HTTPError:
        return None
    return health if health["reconciler"]["passes"] >= count else None


def _same(orch: RunningOrchestrator, before: dict[str, tuple[str, list[int]]]) -> bool:
    try:
        return _snapshot(orch) == before
    except (httpx.HTTPError, AssertionError):
        return False


def _kill_leftovers(pids: set[int]) -> None:
    """Workers of this run that nobody stopped (e.g. a failed run): end them by pid."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _measure_one_instance(orch: RunningOrchestrator, result: dict[str, Any]) -> dict[str, tuple[str, list[int]]]:
    """Creates, updates, reads and the reconcile pass on one instance; returns the integrations' state and pids."""
    orch.create_application(APP)
    devices = load(
        orch,
        lambda n: ("create_device", "POST", f"/api/v1/applications/{APP}/devices", {"device_id": f"dev-{n}"}),
        DEVICES,
        WRITE_CONCURRENCY,
    )
    body = {"template_id": "bench-noop", "config": {}}
    path = f"/api/v1/applications/{APP}/integrations"
    integrations = load(
        orch,
        lambda n: ("create_integration", "POST", path, {"id": f"noop-{n}", "enabled": n < RUNNING, **body}),
        COUNT,
        WRITE_CONCURRENCY,
    )
    started = wait_for(
        lambda: (s := _snapshot(orch)) and sum(1 for _, pids in s.values() if pids) == RUNNING and s,
        300,
        what="every worker started",
    )
    result["create"] = {"devices": devices, "integrations": integrations}
    result["update"] = {
        "integrations": load(
            orch,
            lambda n: (
                "update_integration",
                "PATCH",
                f"/api/v1/applications/{APP}/integrations/noop-{n}",
                {"name": f"renamed {n}"},
            ),
            UPDATES[0],
            WRITE_CONCURRENCY,
        ),
        "devices": load(
            orch,
            lambda n: ("update_device", "PATCH", f"/api/v1/applications/{APP}/devices/dev-{n}", {"name": f"dev {n}"}),
            UPDATES[1],
            WRITE_CONCURRENCY,
        ),
    }
    # Reads, one kind at a time, between two baselines on the same server.
    reads: dict[str, Any] = {"healthz_before": load(orch, READS["healthz"], REQUESTS, CONCURRENCY)}
    for kind in ("list_integrations", "get_integration", "integration_stats", "list_devices"):
        reads[kind] = load(orch, READS[kind], REQUESTS, CONCURRENCY)
    reads["healthz_after"] = load(orch, READS["healthz"], REQUESTS, CONCURRENCY)
    baseline = (reads["healthz_before"]["per_s"] + reads["healthz_after"]["per_s"]) / 2
    reads["ratios_to_healthz"] = {
        kind: round(reads[kind]["per_s"] / baseline, 2)
        for kind in ("list_integrations", "get_integration", "integration_stats", "list_devices")
    }
    result["reads"] = reads
    return started


def _restart(orch: RunningOrchestrator, before: dict[str, tuple[str, list[int]]], result: dict[str, Any]) -> None:
    """SIGKILL (the workers keep running), start again: the first (full) pass adopts every worker."""
    orch.stop(signal.SIGKILL)
    killed = time.perf_counter()
    orch.start(timeout=120)
    healthy = time.perf_counter() - killed
    first = wait_for(lambda: _passes_at_least(orch, 1), 180, interval=0.05, what="the first reconcile pass")
    first_pass_done = time.perf_counter() - killed
    second = wait_for(lambda: _passes_at_least(orch, 2), 60, interval=0.05, what="a second reconcile pass")
    after = _snapshot(orch)
    result["restart"] = {
        "healthy_s": round(healthy, 2),
        "first_pass_done_s": round(first_pass_done, 2),
        "full_pass_s": round(first["reconciler"]["last_pass_seconds"], 2),
        "light_pass_s": round(second["reconciler"]["last_pass_seconds"], 3),
        "adopted": sum(1 for name, (_, pids) in before.items() if pids and after.get(name, ("", []))[1] == pids),
        "of": RUNNING,
    }


def _failover(
    first: RunningOrchestrator, second: RunningOrchestrator, before: dict[str, tuple[str, list[int]]], result: dict
) -> None:
    """A second instance joins; the leader is killed (SIGKILL): until the other leads, and until all is back."""
    second.start(timeout=120)
    wait_for(lambda: len(second.call("GET", "/api/v1/cluster", 200).json()["instances"]) == 2, 30, what="two")
    assert _leading(first) and not _leading(second)
    assert first.process is not None
    first.process.kill()
    killed = time.perf_counter()
    wait_for(lambda: _leading(second), 120, interval=0.05, what="the other instance leading")
    leading = time.perf_counter() - killed
    wait_for(lambda: _passes_at_least(second, 1), 180, interval=0.05, what="the new leader's first pass")
    first_pass = time.perf_counter() - killed
    wait_for(lambda: _same(second, before), 180, interval=0.2, what="every integration back with the same workers")
    back = time.perf_counter() - killed
    cluster = second.call("GET", "/api/v1/cluster", 200).json()
    result["failover"] = {
        "lease_seconds": cluster["leader"]["lease_seconds"],
        "leading_s": round(leading, 2),
        "first_pass_done_s": round(first_pass, 2),
        "all_back_same_pids_s": round(back, 2),
        "pass_s": round(_health(second)["reconciler"]["last_pass_seconds"], 2),
    }


def _postgres_server() -> str:
    """scripts/start-postgres: installs and starts the project's PostgreSQL if needed; its URL."""
    script = PROJECT_ROOT / "scripts" / "start-postgres"
    done = subprocess.run([str(script)], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def run() -> dict[str, Any]:
    """Measure; returns the results (also saved under bench/results/)."""
    result: dict[str, Any] = {"database": DATABASE, "integrations": COUNT, "running": RUNNING, "devices": DEVICES}
    pids: set[int] = set()
    with tempfile.TemporaryDirectory() as tmp:
        templates = Path(tmp) / "templates"
        shutil.copytree(PROJECT_ROOT / "integration_templates", templates)
        (templates / "bench-noop.yaml").write_text(NOOP_TEMPLATE)
        common = {
            "ORCH_TEMPLATES_DIR": str(templates),
            "ORCH_BROKER__MOSQUITTO_BINARY": mosquitto_binary(),
            "ORCH_LOG_LEVEL": "WARNING",
            "ORCH_RUNTIME__RECONCILE_INTERVAL_SECONDS": RECONCILE_INTERVAL,
        }
        server = broker = None
        instances: list[RunningOrchestrator] = []
        try:
            if DATABASE == "postgres":
                server = _postgres_server()
                os.environ[POSTGRES_ENV] = server  # fresh_database() makes a new database for this run
                database = fresh_database()["ORCH_DATABASE_URL"]
                del os.environ[POSTGRES_ENV]  # the instances share that one (else each would get its own)
                broker = ExternalBroker(Path(tmp) / "broker", mosquitto_binary()).start()
                shared = {
                    **common,
                    **broker.orchestrator_settings(),
                    "ORCH_DATABASE_URL": database,
                    "ORCH_SECRET_KEY": Fernet.generate_key().decode(),
                    "ORCH_ADMIN_TOKEN": "admin-" + os.urandom(8).hex(),
                    "ORCH_RUNTIME__PROCESS_DIR": str(Path(tmp) / "workers"),  # one host: the instances share it
                }
                first = RunningOrchestrator(Path(tmp) / "a", device_url=broker.plain_url, **shared)
                second = RunningOrchestrator(Path(tmp) / "b", device_url=broker.plain_url, **shared)
                for orch in (first, second):  # one API address for the workers, whoever leads
                    orch.env["ORCH_PUBLIC_URL"] = second.url
                instances = [first, second]
            else:
                first = RunningOrchestrator(Path(tmp) / "a", **common)
                instances = [first]
            first.start(timeout=120)
            before = _measure_one_instance(first, result)
            pids = {pid for _, found in before.values() for pid in found}
            _restart(first, before, result)
            if len(instances) == 2:
                _failover(first, instances[1], before, result)
        finally:
            for orch in instances:
                orch.stop(timeout=600)  # the last one alone stops every worker
            _kill_leftovers(pids)
            if broker is not None:
                broker.stop()
            if server is not None:
                drop_databases(server)
    path = save("control_plane", result)
    reads, create, update = result["reads"], result["create"], result["update"]
    print(
        f"control plane ({DATABASE}): {COUNT} integrations ({RUNNING} running), {DEVICES} devices. Create "
        f"{create['integrations']['per_s']} integrations/s, {create['devices']['per_s']} devices/s; update "
        f"{update['integrations']['per_s']} / {update['devices']['per_s']} per s. Reads per s (p99 ms) vs healthz "
        f"{reads['healthz_before']['per_s']} / {reads['healthz_after']['per_s']}: "
        + ", ".join(
            f"{kind} {reads[kind]['per_s']} ({reads[kind][kind]['p99']})"
            for kind in ("list_integrations", "get_integration", "integration_stats", "list_devices")
        )
        + f". Restart {result['restart']}. Failover {result.get('failover', 'not measured on SQLite')} -> {path}"
    )
    return result


if __name__ == "__main__":
    run()
