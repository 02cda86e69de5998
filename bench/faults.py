"""Faults: 10,000 uplinks through a webhook integration while something fails, and what arrived.

Each scenario starts a fresh orchestrator (managed Mosquitto, a webhook integration to a local HTTP sink),
sends 10,000 uplinks, and makes one thing fail once a third has been delivered: the worker (SIGKILL, on the
process and on the Docker runtime), the orchestrator (SIGKILL, then started again), the broker (SIGKILL), or
the target (answers 503 for 60 s). Reported for each: uplinks sent and delivered (distinct), copies, time to
recover (the longest pause in deliveries after the fault), the integration's counters next to what the sink
received, and dead letters. The same failures are asserted in the test suite; this records the figures.
"""

from __future__ import annotations

import itertools
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.common import save, start_orchestrator
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink, Received
from tests.support.waiting import wait_for

APP = "faults"
COUNT = int(os.environ.get("BENCH_FAULT_UPLINKS", "10000"))
TARGET_DOWN_SECONDS = 60.0


def _send(orch: RunningOrchestrator, count: int, sent: list[int]) -> None:
    """POST uplinks from 8 clients; an answer other than 201 (the orchestrator restarting) is sent again."""
    url = f"{orch.url}/api/v1/applications/{APP}/devices/dev-1/uplinks"

    def send(numbers: range) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {orch.token}"}, timeout=10) as client:
            for n in numbers:
                while True:
                    try:
                        if client.post(url, json={"f_port": 1, "decoded_payload": {"n": n}}).status_code == 201:
                            sent.append(n)
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, [range(start, count, 8) for start in range(8)]))


def _delivered(sink: HttpSink) -> Counter[int]:
    return Counter(request.json()["uplink_message"]["decoded_payload"]["n"] for request in sink.accepted())


def _worker_pid(orch: RunningOrchestrator) -> int:
    return int(orch.integration(APP, "hook")["status"]["handle"]["pids"][0])


def _kill_worker(orch: RunningOrchestrator) -> None:
    os.kill(_worker_pid(orch), signal.SIGKILL)


def _kill_container(orch: RunningOrchestrator) -> None:
    import docker

    client = docker.from_env()
    for name in orch.integration(APP, "hook")["status"]["handle"]["containers"]:
        client.containers.get(name).kill()
    client.close()


def _kill_orchestrator(orch: RunningOrchestrator) -> None:
    orch.stop(signal.SIGKILL)
    orch.start(timeout=120)


def _kill_broker(orch: RunningOrchestrator) -> None:
    os.kill(int((orch.data_dir / "mosquitto" / "mosquitto.pid").read_text()), signal.SIGKILL)


def _scenario(name: str, fault: Callable[[RunningOrchestrator, HttpSink], None], **env: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, HttpSink() as sink:
        orch = start_orchestrator(Path(tmp), **env)
        try:
            orch.create_application(APP)
            orch.create_device(APP, "dev-1")
            orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
            orch.wait_state(APP, "hook", "running", timeout=120)
            sent: list[int] = []
            started = time.perf_counter()
            sender = threading.Thread(target=_send, args=(orch, COUNT, sent))
            sender.start()
            wait_for(lambda: len(_delivered(sink)) >= COUNT // 3, timeout=300, interval=0.05, what="a third")
            failed_at = time.perf_counter()
            fault(orch, sink)
            sender.join(600)
            wait_for(lambda: len(_delivered(sink)) >= COUNT, timeout=600, interval=0.5, what="every uplink")
            elapsed = time.perf_counter() - started
            counts = _delivered(sink)
            counters = wait_for(
                lambda: (c := orch.integration(APP, "hook")["counters"])["delivered"] >= COUNT and c,
                timeout=60,
                what="the counters",
            )
            # Time to recover: the longest pause in deliveries from the fault on (requests already on their way
            # when it struck may still land just after it).
            arrivals = sorted(request.at for request in sink.accepted() if request.at >= failed_at)
            pauses = [later - earlier for earlier, later in itertools.pairwise([failed_at, *arrivals])]
            result = {
                "sent": len(sent),
                "delivered_distinct": len(counts),
                "copies": sum(count - 1 for count in counts.values()),
                "sink_requests": len(sink.accepted()),
                "recovery_s": round(max(pauses, default=0.0), 2),
                "total_s": round(elapsed, 1),
                "counters": {key: counters[key] for key in ("delivered", "failed", "retried", "dead_lettered")},
            }
        finally:
            orch.stop(timeout=120)
            if env.get("ORCH_RUNTIME__KIND") == "docker":
                import docker

                client = docker.from_env()
                for container in client.containers.list(
                    all=True, filters={"label": f"io.iot-orchestrator.application={APP}"}
                ):
                    container.remove(force=True)
    print(f"  {name}: {result}", flush=True)
    return result


def _target_down(orch: RunningOrchestrator, sink: HttpSink) -> None:
    until = time.monotonic() + TARGET_DOWN_SECONDS
    accept = sink.responder

    def answer(request: Received) -> tuple[int, dict[str, str], bytes]:
        return (503, {}, b"down for maintenance") if time.monotonic() < until else accept(request)

    sink.responder = answer


def run() -> dict[str, Any]:
    """Every scenario; returns the results (also saved under bench/results/)."""
    docker = {"ORCH_RUNTIME__KIND": "docker", "ORCH_RUNTIME__DOCKER__NETWORK": "host"}
    result = {
        "uplinks": COUNT,
        "worker_killed_process": _scenario("worker killed (process)", lambda orch, _: _kill_worker(orch)),
        "worker_killed_docker": _scenario("worker killed (Docker)", lambda orch, _: _kill_container(orch), **docker),
        "orchestrator_killed": _scenario("orchestrator killed", lambda orch, _: _kill_orchestrator(orch)),
        "broker_killed": _scenario("broker killed", lambda orch, _: _kill_broker(orch)),
        "target_down_60s": _scenario("target down 60 s", _target_down),
    }
    path = save("faults", result)
    print(f"faults -> {path}")
    return result


if __name__ == "__main__":
    run()
