"""Start-up and footprint: enable -> first delivered message (Docker and process runtimes) next to a bare
`docker run` of the same image, image sizes, and idle memory per worker."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Stopwatch, docker_version, save, start_orchestrator, summary
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "bench"
IMAGE = "iot-orchestrator/webhook:0.1.0"
RUNS = 7


def _enable_to_delivery(orch: RunningOrchestrator, sink: HttpSink, runs: int) -> list[float]:
    """Per run: an uplink waits while the integration is disabled; time from `enable` to its delivery."""
    base = f"/api/v1/applications/{APP}/integrations/hook"
    orch.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    orch.wait_state(APP, "hook", "running", timeout=120)  # first start creates the broker session
    samples = []
    for run in range(runs):
        orch.call("POST", base + "/disable", 200)
        sink.clear()
        orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"run": run}})
        started = time.perf_counter()
        orch.call("POST", base + "/enable", 200)
        arrived = wait_for(sink.accepted, timeout=120, interval=0.005, what="the first delivery")[0].at
        samples.append(arrived - started)
    return samples


def _idle_memory_docker(orch: RunningOrchestrator) -> float:
    import docker

    client = docker.from_env()
    instance = (orch.data_dir / "instance.id").read_text().strip()
    (container,) = client.containers.list(filters={"label": [f"io.iot-orchestrator.instance={instance}"]})
    time.sleep(10)
    stats = container.stats(stream=False)["memory_stats"]
    cache = stats.get("stats", {}).get("inactive_file", stats.get("stats", {}).get("cache", 0))
    return (stats["usage"] - cache) / 1024 / 1024


def _idle_memory_process(orch: RunningOrchestrator) -> float:
    pid = orch.integration(APP, "hook")["status"]["handle"]["pids"][0]
    time.sleep(10)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _remove_containers(orch: RunningOrchestrator) -> None:
    import docker

    instance = (orch.data_dir / "instance.id").read_text().strip()
    client = docker.from_env()
    for container in client.containers.list(all=True, filters={"label": [f"io.iot-orchestrator.instance={instance}"]}):
        container.remove(force=True)


def _bare_docker_run(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        with Stopwatch() as watch:
            subprocess.run(
                ["docker", "run", "--rm", "--network", "host", "--entrypoint", "true", IMAGE],
                check=True,
                capture_output=True,
            )
        samples.append(watch.seconds)
    return samples


def _scenario(kind: str, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, HttpSink() as sink:
        orch = start_orchestrator(Path(tmp), ORCH_RUNTIME__KIND=kind, ORCH_RUNTIME__DOCKER__NETWORK="host")
        try:
            orch.create_application(APP)
            orch.create_device(APP, "dev-1")
            samples = _enable_to_delivery(orch, sink, runs)
            memory = _idle_memory_docker(orch) if kind == "docker" else _idle_memory_process(orch)
        finally:
            orch.stop()
            if kind == "docker":
                _remove_containers(orch)
    return {"enable_to_first_delivery_s": summary(samples), "idle_memory_mib": round(memory, 1)}


def run(runs: int = RUNS) -> dict[str, Any]:
    """Measure everything; returns the results (also saved under bench/results/)."""
    import docker

    client = docker.from_env()
    sizes = {
        image.tags[0]: round(image.attrs["Size"] / 1e6, 1)
        for image in client.images.list(name="iot-orchestrator/*")
        if image.tags
    }
    bare = summary(_bare_docker_run(runs))
    docker_result = _scenario("docker", runs)
    process_result = _scenario("process", runs)
    ratio = docker_result["enable_to_first_delivery_s"]["median"] / bare["median"]
    result = {
        "docker_engine": docker_version(),
        "bare_docker_run_s": bare,
        "docker": docker_result,
        "process": process_result,
        "docker_vs_bare_ratio": round(ratio, 2),
        "image_sizes_mb": sizes,
    }
    path = save("startup", result)
    print(
        f"start-up: docker {docker_result['enable_to_first_delivery_s']['median']:.2f} s, bare docker run "
        f"{bare['median']:.2f} s (ratio {ratio:.2f}), process "
        f"{process_result['enable_to_first_delivery_s']['median']:.2f} s; idle memory docker "
        f"{docker_result['idle_memory_mib']} MiB, process {process_result['idle_memory_mib']} MiB; "
        f"sizes {sizes} -> {path}"
    )
    return result


if __name__ == "__main__":
    run()
