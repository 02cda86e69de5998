"""Two orchestrator processes on one PostgreSQL database and one external Mosquitto, when things go wrong.

The leader is killed (SIGKILL) in the middle of a flow of uplinks, or frozen (SIGSTOP) past its lease;
an event-stream client moves from one instance to the other. Workers run on the process runtime (both
instances share its directory, as instances on one host do) and on the Docker runtime.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from cryptography.fernet import Fernet

from tests.support.broker import ExternalBroker
from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import POSTGRES_ENV, RunningOrchestrator, fresh_database
from tests.support.proxy import CuttableRelay
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

LEASE_SECONDS = 4
REPLICAS = 2


def process_workers(directory: Path) -> Callable[[], set[str]]:
    """The webhook worker processes running from this directory (what the OS runs, not what records say)."""

    def running() -> set[str]:
        found = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                command = (entry / "cmdline").read_bytes().split(b"\0")
                environment = (entry / "environ").read_bytes()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"webhook_worker" in command and str(directory).encode() in environment and state != "Z":
                found.add(entry.name)
        return found

    return running


def docker_workers(engine: docker.DockerClient, app: str) -> Callable[[], set[str]]:
    """The running containers of this application's integrations."""

    def running() -> set[str]:
        while True:
            try:
                labels = {"label": [f"io.iot-orchestrator.application={app}"], "status": "running"}
                return {container.id for container in engine.containers.list(filters=labels)}
            except docker.errors.NotFound:
                continue  # one went while the SDK inspected it: list again

    return running


@dataclass
class WorkerWatch:
    """Samples the running workers every 50 ms in a thread: the most ever seen at once, and the last set."""

    running: Callable[[], set[str]]
    most: int = 0
    last: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> WorkerWatch:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.last = self.running()
            self.most = max(self.most, len(self.last))
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass
class TwoInstances:
    first: RunningOrchestrator
    second: RunningOrchestrator
    broker: ExternalBroker
    app: str
    workers: Callable[[], set[str]]

    def leader(self) -> tuple[RunningOrchestrator, RunningOrchestrator]:
        """(leader, follower)."""
        if self.first.call("GET", "/api/v1/cluster", 200).json()["leading"]:
            return self.first, self.second
        return self.second, self.first

    def device(self, key: str) -> MqttProbe:
        return MqttProbe(self.broker.plain_url, ".".join(key.split(".")[:2]), key)


@pytest.fixture(params=["process", "docker"])
def cluster(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    mosquitto: str,
    postgres_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TwoInstances]:
    monkeypatch.setenv(POSTGRES_ENV, postgres_server)
    runtime = request.param
    app = f"ha-{runtime}-{os.urandom(3).hex()}"
    broker = ExternalBroker(tmp_path / "broker", mosquitto).start()
    shared = {
        **broker.orchestrator_settings(),
        "ORCH_DATABASE_URL": fresh_database()["ORCH_DATABASE_URL"],
        "ORCH_SECRET_KEY": Fernet.generate_key().decode(),
        "ORCH_ADMIN_TOKEN": "admin-" + os.urandom(8).hex(),
        "ORCH_LEASE_SECONDS": str(LEASE_SECONDS),
        "ORCH_RUNTIME__KIND": runtime,
        "ORCH_RUNTIME__DOCKER__NETWORK": "host",
        "ORCH_RUNTIME__PROCESS_DIR": str(tmp_path / "workers"),  # one host: the instances share it
    }
    engine = None
    if runtime == "docker":
        engine = docker.from_env(timeout=30)
        workers = docker_workers(engine, app)
    else:
        workers = process_workers(tmp_path / "workers")
    first = RunningOrchestrator(tmp_path / "a", device_url=broker.plain_url, **shared)
    second = RunningOrchestrator(tmp_path / "b", device_url=broker.plain_url, **shared)
    # Workers reach the API at one address for the whole cluster (a load balancer's, in production). Here it
    # is the second's: the first starts first, leads, and is the one killed or frozen.
    for orch in (first, second):
        orch.env["ORCH_PUBLIC_URL"] = second.url
    first.start()
    second.start()
    try:
        yield TwoInstances(first, second, broker, app, workers)
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            for name, orch in (("first", first), ("second", second)):
                print(f"\n==== {name} ====\n" + orch.log_tail(60))
        for orch in (first, second):
            if orch.process is not None and orch.process.poll() is None:
                orch.process.send_signal(signal.SIGCONT)  # a frozen one must be able to stop
            orch.stop()
        remove_workers(workers, engine, app)
        if engine is not None:
            engine.close()
        broker.stop()


def remove_workers(workers: Callable[[], set[str]], engine: docker.DockerClient | None, app: str) -> None:
    """Whatever a killed leader left that nobody adopted once both instances were gone."""
    if engine is not None:
        for container in engine.containers.list(all=True, filters={"label": f"io.iot-orchestrator.application={app}"}):
            container.remove(force=True)
        return
    for pid in workers():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    wait_for(lambda: not workers(), 10, what="stray workers gone")


def set_up(ha: TwoInstances, sink: HttpSink, through: RunningOrchestrator) -> str:
    """An application with one device and a webhook of two replicas, made through `through`; returns a device key."""
    through.create_application(ha.app)
    through.create_device(ha.app, "dev-1")
    through.create_integration(ha.app, id="hook", template_id="webhook", config={"url": sink.url}, replicas=REPLICAS)
    through.wait_state(ha.app, "hook", "running", timeout=90)
    return through.create_key(ha.app, "uplinks:write", "devices:read")


def counts_at(sink: HttpSink) -> list[int]:
    return [request.json()["uplink_message"]["f_cnt"] for request in sink.accepted()]


def test_the_leader_killed_during_10000_uplinks_loses_none_and_no_worker_runs_twice(
    cluster: TwoInstances, sink: HttpSink
) -> None:
    leader, follower = cluster.leader()
    key = set_up(cluster, sink, follower)  # a change through the follower reaches the workers
    before = wait_for(lambda: (w := cluster.workers()) and len(w) == REPLICAS and w, 30, what="two workers")
    total, kill_at = 10_000, 3_000
    killed: dict[str, float] = {}

    def send() -> None:
        device = cluster.device(key)
        for n in range(total):
            if n == kill_at:
                assert leader.process is not None
                leader.process.kill()  # SIGKILL: no clean stop, no lease given up, its broker session stays
                killed["at"] = time.monotonic()
            device.publish(f"v3/{cluster.app}/devices/dev-1/up/push", {"f_port": 1, "f_cnt": n})
        device.close()

    with WorkerWatch(cluster.workers) as watch:
        sender = threading.Thread(target=send)
        sender.start()
        wait_for(lambda: "at" in killed, 60, what="the leader killed")
        wait_for(
            lambda: follower.call("GET", "/api/v1/cluster", 200).json()["leading"],
            15,
            interval=0.1,
            what="the other instance leading within 15 s",
        )
        took_over = time.monotonic() - killed["at"]
        sender.join(120)
        wait_for(lambda: set(counts_at(sink)) >= set(range(total)), 120, what=f"all {total} uplinks at the sink")
        time.sleep(1)
    counts = counts_at(sink)
    assert set(counts) == set(range(total))
    print(f"failover {took_over:.1f} s; {len(counts) - total} uplinks delivered twice")
    # Never more workers than replicas, and the same ones: adopted by the new leader, not started again.
    assert watch.most == REPLICAS
    assert watch.last == before == cluster.workers()
    assert follower.integration(cluster.app, "hook")["status"]["actual"] == "running"
    # The dead instance was taken over (its broker session drained and ended); the new leader acts on API writes.
    wait_for(lambda: "took over from instance" in follower.log_tail(400), 30, what="the dead instance taken over")
    assert len(follower.call("GET", "/api/v1/cluster", 200).json()["instances"]) == 1
    follower.call("POST", f"/api/v1/applications/{cluster.app}/integrations/hook/restart", 200)
    wait_for(lambda: (w := cluster.workers()) and len(w) == REPLICAS and not w & before, 60, what="new workers")


def test_a_leader_frozen_past_its_lease_does_not_act_when_it_resumes(cluster: TwoInstances, sink: HttpSink) -> None:
    leader, follower = cluster.leader()
    key = set_up(cluster, sink, leader)
    before = wait_for(lambda: (w := cluster.workers()) and len(w) == REPLICAS and w, 30, what="two workers")
    assert leader.process is not None
    leader.process.send_signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: follower.call("GET", "/api/v1/cluster", 200).json()["leading"],
            LEASE_SECONDS * 3,
            what="the other instance leading",
        )
        # While the old leader is frozen, the new one changes the worker's configuration: it starts new ones.
        follower.call(
            "PATCH",
            f"/api/v1/applications/{cluster.app}/integrations/hook",
            200,
            json={"config": {"url": sink.url + "/v2"}},
        )
        new = wait_for(
            lambda: (w := cluster.workers()) and len(w) == REPLICAS and not w & before and w, 60, what="new workers"
        )
        log_lines = len(leader.log_tail(100_000).splitlines())
    finally:
        leader.process.send_signal(signal.SIGCONT)
    # Resumed, the old leader believes nothing it held: it does not act, and knows it no longer leads.
    wait_for(lambda: not leader.call("GET", "/api/v1/cluster", 200).json()["leading"], 10, what="resumed, following")
    with WorkerWatch(cluster.workers) as watch:
        time.sleep(LEASE_SECONDS * 1.5)
    assert watch.most == REPLICAS and watch.last == new
    after = leader.log_tail(100_000).splitlines()[log_lines:]
    assert not [line for line in after if "starting " in line or "removing " in line], after
    # Uplinks still flow through both instances, to the new workers.
    device = cluster.device(key)
    for n in range(200):
        device.publish(f"v3/{cluster.app}/devices/dev-1/up/push", {"f_port": 1, "f_cnt": n})
    device.close()
    wait_for(lambda: set(counts_at(sink)) >= set(range(200)), 60, what="200 uplinks at the sink")


def read_stream(orch: RunningOrchestrator, app: str, last_id: str | None, count: int) -> list[dict[str, Any]]:
    """`count` uplink events from an instance's SSE stream (resuming after `last_id`)."""
    from httpx_sse import connect_sse

    headers = {"Authorization": f"Bearer {orch.token}", **({"Last-Event-ID": last_id} if last_id else {})}
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=orch.url, timeout=30) as client,
        connect_sse(client, "GET", f"/api/v1/applications/{app}/events?prefix=uplink", headers=headers) as source,
    ):
        for sse in source.iter_sse():
            if sse.id and sse.event == "uplink":
                events.append({"id": int(sse.id), "data": sse.json()})
            if len(events) >= count:
                break
    return events


@pytest.mark.parametrize("cluster", ["process"], indirect=True)
def test_an_event_stream_client_moving_to_the_other_instance_resumes_without_loss(
    cluster: TwoInstances, sink: HttpSink
) -> None:
    leader, follower = cluster.leader()
    key = set_up(cluster, sink, leader)
    total = 600
    received: list[dict[str, Any]] = []

    def listen() -> None:
        received.extend(read_stream(leader, cluster.app, None, 250))  # live, from one instance
        last = str(received[-1]["id"])
        received.extend(read_stream(follower, cluster.app, last, total - 250))  # then the other, resuming

    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(1)
    device = cluster.device(key)
    for n in range(total):
        device.publish(f"v3/{cluster.app}/devices/dev-1/up/push", {"f_port": 1, "f_cnt": n})
        if n % 50 == 0:
            time.sleep(0.1)  # a flow, not a burst: the move happens while uplinks arrive
    device.close()
    listener.join(90)
    assert not listener.is_alive()
    # Both instances handle uplinks (each its share); the stream has all of them, once each, in log order.
    ids = [event["id"] for event in received]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert sorted(event["data"]["uplink_message"]["f_cnt"] for event in received) == list(range(total))


def test_a_leader_cut_off_from_the_database_stops_acting_answers_503_and_rejoins_without_duplicates(
    tmp_path: Path, mosquitto: str, postgres_server: str, monkeypatch: pytest.MonkeyPatch, sink: HttpSink
) -> None:
    monkeypatch.setenv(POSTGRES_ENV, postgres_server)
    database_url = fresh_database()["ORCH_DATABASE_URL"]
    server_port = int(postgres_server.rsplit(":", 1)[1].split("/")[0])
    relay = CuttableRelay(server_port).start()  # only the first instance reaches the database through it
    app = f"ha-db-{os.urandom(3).hex()}"
    broker = ExternalBroker(tmp_path / "broker", mosquitto).start()
    shared = {
        **broker.orchestrator_settings(),
        "ORCH_SECRET_KEY": Fernet.generate_key().decode(),
        "ORCH_ADMIN_TOKEN": "admin-" + os.urandom(8).hex(),
        "ORCH_LEASE_SECONDS": str(LEASE_SECONDS),
        "ORCH_RUNTIME__PROCESS_DIR": str(tmp_path / "workers"),
    }
    via_relay = database_url.replace(f":{server_port}/", f":{relay.port}/")
    first = RunningOrchestrator(tmp_path / "a", device_url=broker.plain_url, **shared, ORCH_DATABASE_URL=via_relay)
    second = RunningOrchestrator(tmp_path / "b", device_url=broker.plain_url, **shared, ORCH_DATABASE_URL=database_url)
    for orch in (first, second):
        orch.env["ORCH_PUBLIC_URL"] = second.url
    ha = TwoInstances(first.start(), second.start(), broker, app, process_workers(tmp_path / "workers"))
    try:
        key = set_up(ha, sink, first)
        before = wait_for(lambda: (w := ha.workers()) and len(w) == REPLICAS and w, 30, what="two workers")
        with WorkerWatch(ha.workers) as watch:
            relay.cut()
            # The cut-off instance says what is wrong, in its API and its health; the other takes the lead.
            response = first.call("GET", f"/api/v1/applications/{app}/integrations")
            assert response.status_code == 503 and "database" in response.json()["detail"], response.text
            wait_for(lambda: httpx.get(f"{first.url}/healthz").status_code == 503, LEASE_SECONDS * 2, what="503 health")
            assert httpx.get(f"{first.url}/healthz").json()["database"]["status"] == "failing"
            # Not ready (a load balancer sends elsewhere), but alive (a restart would not bring the database back).
            assert httpx.get(f"{first.url}/readyz").status_code == 503
            assert httpx.get(f"{first.url}/livez").status_code == 200
            wait_for(
                lambda: second.call("GET", "/api/v1/cluster", 200).json()["leading"],
                LEASE_SECONDS * 3,
                what="the other instance leading",
            )
            device = ha.device(key)
            for n in range(200):  # some reach the cut-off instance: it keeps them until it can log them
                device.publish(f"v3/{app}/devices/dev-1/up/push", {"f_port": 1, "f_cnt": n})
            device.close()
            time.sleep(LEASE_SECONDS)
            relay.restore()
            wait_for(lambda: httpx.get(f"{first.url}/healthz").status_code == 200, 30, what="healthy again")
            assert not first.call("GET", "/api/v1/cluster", 200).json()["leading"]
            wait_for(lambda: set(counts_at(sink)) >= set(range(200)), 60, what="200 uplinks at the sink")
            time.sleep(LEASE_SECONDS)
        # Nothing ran twice: the same two workers throughout, adopted by the new leader.
        assert watch.most == REPLICAS and watch.last == before
    finally:
        for orch in (first, second):
            orch.stop()
        remove_workers(ha.workers, None, app)
        relay.cut()
        broker.stop()
