"""The Docker runtime's pure builders: names, labels, hardened options, and URLs as containers see them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from orchestrator.runtime.base import WorkerSpec
from orchestrator.runtime.docker import container_labels, container_name, container_options, via_host_alias


def spec(**changes: object) -> WorkerSpec:
    values: dict[str, object] = {
        "name": "farm--hook",
        "application_id": "farm",
        "integration_id": "hook",
        "template_id": "webhook",
        "template_version": "1.0.0",
        "image": "iot-orchestrator/webhook:0.1.0",
        "python_module": "webhook_worker",
        "environment": {"WEBHOOK_URL": "https://x", "HANDLER_API_KEY": "ik.abc.SECRET", "WEBHOOK_AUTH_TOKEN": "t0k"},
        "secret_env": ("WEBHOOK_AUTH_TOKEN", "HANDLER_API_KEY"),
        "replicas": 2,
        "memory_mb": 64,
        "cpus": 0.25,
    }
    values.update(changes)
    return WorkerSpec(**values)  # type: ignore[arg-type]


def test_names_are_dns_safe_and_bounded() -> None:
    short = container_name("farm--hook", 0, "abcdef0123456789")
    assert short == "iot-farm--hook-0-abcdef01"
    long = container_name("a" * 36 + "--" + "b" * 36, 3, "abcdef0123456789")
    assert len(long) <= 63 and long.startswith("iot-aaaa") and not long.endswith("-")
    assert long != container_name("a" * 36 + "--" + "b" * 35 + "c", 3, "abcdef0123456789")


def test_labels_identify_but_never_carry_secrets() -> None:
    labels = container_labels(spec(), 1, "inst1", "c1")
    assert labels["io.iot-orchestrator.integration"] == "hook"
    assert labels["io.iot-orchestrator.replica"] == "1"
    assert labels["io.iot-orchestrator.config-hash"] == spec().config_hash
    text = json.dumps(labels)
    assert "SECRET" not in text and "t0k" not in text


def test_options_are_hardened_and_limited() -> None:
    options = container_options(spec(), 0, "iot-orchestrator", "inst1")
    assert options["user"] == "65532:65532" and options["read_only"] is True
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges:true"]
    assert options["mem_limit"] == "64m" and (options["cpu_quota"], options["cpu_period"]) == (250_000, 1_000_000)
    assert options["network"] == "iot-orchestrator"
    assert options["extra_hosts"] == {"host.docker.internal": "host-gateway"}
    assert options["environment"]["WORKER_REPLICA"] == "0" and options["environment"]["WORKER_REPLICAS"] == "2"
    assert options["environment"]["WORKER_SECRET_ENV"] == "WEBHOOK_AUTH_TOKEN,HANDLER_API_KEY"
    assert "volumes" not in options  # in particular, never the Docker socket
    host = container_options(spec(), 0, "host", "inst1")
    assert host["network_mode"] == "host" and "network" not in host


def test_config_hash_changes_with_anything_that_needs_a_new_container() -> None:
    base = spec().config_hash
    assert spec(environment={"WEBHOOK_URL": "https://y"}).config_hash != base
    assert spec(replicas=3).config_hash != base
    assert spec(memory_mb=128).config_hash != base
    assert spec(image="iot-orchestrator/webhook:0.2.0").config_hash != base
    assert spec(template_version="1.0.1").config_hash == base  # a label only


def test_loopback_urls_become_the_host_alias() -> None:
    assert via_host_alias("mqtt://127.0.0.1:1883") == "mqtt://host.docker.internal:1883"
    assert via_host_alias("http://localhost:8080/api") == "http://host.docker.internal:8080/api"
    assert via_host_alias("mqtts://broker.example.com:8883") == "mqtts://broker.example.com:8883"


def test_an_unreachable_engine_is_a_clear_runtime_failure(tmp_path: Path) -> None:
    import docker

    from orchestrator.config import Settings
    from orchestrator.errors import RuntimeFailure
    from orchestrator.runtime.docker import DockerRuntime

    # A fixed API version: the client would otherwise ask the (missing) engine for one right here.
    client = docker.DockerClient(base_url=f"unix://{tmp_path}/no-engine.sock", version="1.41", timeout=5)
    runtime = DockerRuntime(Settings(data_dir=tmp_path), client=client)
    for call in (runtime.status("app--hook"), runtime.list_workers(), runtime.stop("app--hook")):
        with pytest.raises(RuntimeFailure, match="the Docker engine failed"):
            asyncio.run(call)
