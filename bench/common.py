"""Shared helpers for benchmarks: the machine, timing, and writing results next to docs/benchmarks.md."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.orchestrator import RunningOrchestrator

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """Cores, memory and CPU model of this machine."""
    memory_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory_kb = int(line.split()[1])
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def docker_version() -> str:
    """The engine's version, or why there is none."""
    result = subprocess.run(["docker", "version", "-f", "{{.Server.Version}}"], capture_output=True, text=True)
    return result.stdout.strip() or result.stderr.strip()[:80]


def summary(samples: list[float]) -> dict[str, float]:
    """Median, min, max and p90 of timing samples (seconds)."""
    ordered = sorted(samples)
    return {
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "p90": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], 4),
        "runs": len(ordered),
    }


def percentile(samples: list[float], fraction: float) -> float:
    """The value below which `fraction` of samples fall."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def save(name: str, result: dict[str, Any]) -> Path:
    """Write results as JSON under bench/results/ (one file per scenario and run)."""
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"scenario": name, "at": stamp, "machine": machine(), **result}, indent=2))
    return path


class Stopwatch:
    """`with Stopwatch() as watch: ...; watch.seconds`."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def mosquitto_binary() -> str:
    """Where Debian's Mosquitto is (scripts/setup installs it)."""
    return shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def start_orchestrator(directory: Path, **env: str) -> RunningOrchestrator:
    """An orchestrator with a managed Mosquitto and the process runtime (unless `env` says otherwise), quiet logs."""
    settings = {
        "ORCH_BROKER__MOSQUITTO_BINARY": mosquitto_binary(),
        "ORCH_RUNTIME__KIND": "process",
        "ORCH_LOG_LEVEL": "WARNING",
        **env,
    }
    return RunningOrchestrator(directory, **settings).start()


def broker_password(orch: RunningOrchestrator) -> str:
    """The password of the handler's account on the managed broker (benchmarks publish as the handler)."""
    return (orch.data_dir / "broker.password").read_text().strip()
