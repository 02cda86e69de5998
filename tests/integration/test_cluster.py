"""Several instances on one database: one leader by a lease with a fencing token, and refused mismatches.

The lease is tested on the real databases (PostgreSQL and SQLite) with short durations; the refusal at start
with real orchestrator processes on one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from orchestrator.cluster import Cluster, ConfigurationMismatch, Identity
from orchestrator.db import Database
from orchestrator.db.models import QueuedDownlink
from tests.support.broker import ExternalBroker
from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import POSTGRES_ENV, RunningOrchestrator, fresh_database, start_fails
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

LEASE_SECONDS = 3.0
APP = "shared-app"


@pytest.fixture
def database(both_databases: str, tmp_path: Path) -> Iterator[Database]:
    url = fresh_database().get("ORCH_DATABASE_URL") or f"sqlite:///{tmp_path / 'cluster.db'}"
    db = Database(url)
    db.migrate()
    yield db
    db.engine.dispose()


def member(db: Database, name: str, templates: str = "t1", secret: str = "s1") -> Cluster:
    return Cluster(db, Identity(name, f"http://{name}", templates, secret), LEASE_SECONDS)


async def test_one_leader_and_a_follower_takes_over_when_it_stops_renewing(database: Database) -> None:
    first, second = member(database, "a"), member(database, "b")
    await first.join()
    await second.join()
    assert first.leading and not second.leading
    token = first.token
    first.start()
    second.start()
    await asyncio.sleep(LEASE_SECONDS * 1.5)
    assert first.leading and not second.leading  # renewed well before expiry: no change of leader
    assert first.token == token

    # The leader dies (no renewal, no release): the follower leads within about 1.3 lease durations.
    assert first._task is not None
    first._task.cancel()
    died = time.monotonic()
    while not second.leading:
        assert time.monotonic() - died < LEASE_SECONDS * 2, "nobody took the lead over"
        await asyncio.sleep(0.05)
    assert second.token == (token or 0) + 1
    # The old leader, paused until now, believes nothing: its own clock says its lease ran out, and the
    # fence says the token moved on.
    assert not first.leading
    first._valid_until = time.monotonic() + 60  # even if its clock were wrong
    assert not await first.confirm()
    assert await second.confirm()
    report = await second.report()
    assert report["leader"]["instance"] == "b" and report["leader"]["transitions"] == 2
    assert {item["id"] for item in report["instances"]} == {"b"}  # the dead one no longer beats
    await second.stop()


async def test_a_clean_stop_hands_the_lead_over_at_once(database: Database) -> None:
    first, second = member(database, "a"), member(database, "b")
    await first.join()
    await second.join()
    await first.stop()  # gives the lease up
    await second.step()
    assert second.leading
    assert {item["id"] for item in (await second.report())["instances"]} == {"b"}
    await second.stop()


async def test_an_instance_with_other_templates_or_another_secret_key_is_refused(database: Database) -> None:
    await member(database, "a").join()
    with pytest.raises(ConfigurationMismatch, match="ORCH_TEMPLATES_DIR: instance a"):
        await member(database, "b", templates="t2").join()
    with pytest.raises(ConfigurationMismatch, match="ORCH_SECRET_KEY: instance a"):
        await member(database, "c", secret="s2").join()
    await member(database, "d").join()  # the same configuration joins


def test_an_orchestrator_on_postgresql_shows_the_leader_and_a_second_with_its_own_broker_is_refused(
    tmp_path: Path, mosquitto: str, postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_TEST_POSTGRES_URL", postgres_server)
    database_url = fresh_database()["ORCH_DATABASE_URL"]
    leader = RunningOrchestrator(
        tmp_path / "a", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_DATABASE_URL=database_url
    ).start()
    try:
        cluster = leader.call("GET", "/api/v1/cluster", 200).json()
        assert cluster["leading"] and cluster["leader"]["instance"] == cluster["instance"]
        assert [item["id"] for item in cluster["instances"]] == [cluster["instance"]]
        assert leader.call("GET", "/healthz", 200).json()["cluster"]["leader"]["instance"] == cluster["instance"]
        # A second instance with a managed broker of its own could share nothing with the first.
        line = start_fails(tmp_path / "b", mosquitto, ORCH_DATABASE_URL=database_url)
        assert line.startswith(f"cannot start: ORCH_BROKER__MODE: instance {cluster['instance']}")
    finally:
        leader.stop()


def test_two_instances_share_one_database_and_one_broker(
    tmp_path: Path, mosquitto: str, postgres_server: str, monkeypatch: pytest.MonkeyPatch, sink: HttpSink
) -> None:
    monkeypatch.setenv(POSTGRES_ENV, postgres_server)
    broker = ExternalBroker(tmp_path / "broker", mosquitto).start()
    shared = {
        **broker.orchestrator_settings(),
        "ORCH_DATABASE_URL": fresh_database()["ORCH_DATABASE_URL"],
        "ORCH_SECRET_KEY": Fernet.generate_key().decode(),
        "ORCH_ADMIN_TOKEN": "admin-" + os.urandom(8).hex(),
        "ORCH_LEASE_SECONDS": "4",
        "ORCH_BROKER__MOSQUITTO_BINARY": mosquitto,
    }
    first = RunningOrchestrator(tmp_path / "a", device_url=broker.plain_url, **shared).start()
    second = RunningOrchestrator(tmp_path / "b", device_url=broker.plain_url, **shared).start()
    try:
        cluster = first.call("GET", "/api/v1/cluster", 200).json()
        assert cluster["leader"]["instance"] == cluster["instance"] and len(cluster["instances"]) == 2, cluster
        assert not second.call("GET", "/api/v1/cluster", 200).json()["leading"]

        # Changes through the instance that does not lead: the leader starts the worker.
        second.create_application(APP)
        second.create_device(APP, "dev-1")
        second.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
        second.wait_state(APP, "hook", "running")
        key = second.create_key(APP, "uplinks:write", "devices:read")
        device = MqttProbe(broker.plain_url, ".".join(key.split(".")[:2]), key)
        for n in range(300):
            device.publish(f"v3/{APP}/devices/dev-1/up/push", {"f_port": 1, "f_cnt": n})
        device.close()
        # Each uplink is handled by one instance: every one arrives, none twice.
        wait_for(lambda: len(sink.accepted()) >= 300, 60, what="300 uplinks at the sink")
        time.sleep(1)
        counts = [request.json()["uplink_message"]["f_cnt"] for request in sink.accepted()]
        assert sorted(counts) == list(range(300))
        # Each instance knows what the other changed: a device made on one takes uplinks on the other, a key
        # made on one opens the other's API.
        first.create_device(APP, "dev-2")
        second.uplink(APP, "dev-2", {"f_port": 2, "f_cnt": 1000})
        headers = {"Authorization": f"Bearer {key}"}
        wait_for(
            lambda: httpx.get(f"{first.url}/api/v1/applications/{APP}/devices", headers=headers).status_code == 200
        )

        # The leader stops: the other leads at once (the lease is given up) and runs the worker again.
        first.stop()
        wait_for(lambda: second.call("GET", "/api/v1/cluster", 200).json()["leading"], 10, what="a new leader")
        second.wait_state(APP, "hook", "running", timeout=60)
        # The stopped instance left the shared subscriptions: none of these waits in its session.
        device = MqttProbe(broker.plain_url, ".".join(key.split(".")[:2]), key)
        for n in range(2000, 2100):
            device.publish(f"v3/{APP}/devices/dev-1/up/push", {"f_port": 1, "f_cnt": n})
        device.close()

        def after_stop() -> set[int]:
            return {r.json()["uplink_message"]["f_cnt"] for r in sink.accepted()} & set(range(2000, 2100))

        wait_for(lambda: len(after_stop()) == 100, 30, what="the 100 uplinks sent after the leader stopped")
    finally:
        first.stop()
        second.stop()
        broker.stop()


def test_two_instances_taking_a_devices_downlink_at_once_never_send_the_same_one(
    postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.db.models import Application, Device
    from orchestrator.store import downlinks

    monkeypatch.setenv(POSTGRES_ENV, postgres_server)
    db = Database(fresh_database()["ORCH_DATABASE_URL"])
    db.migrate()
    try:
        with db.session() as session:
            session.add(Application(id=APP, name=APP))
            session.add(Device(application_id=APP, device_id="dev-1"))
        with db.session() as session:
            downlinks.enqueue(
                session, app_id=APP, device_id="dev-1", downlinks=[{"f_port": 1}], replace=False, limit=10
            )
        # Two uplinks of one device, handled by two instances at the same moment: one sends the downlink.
        with db.session() as first:
            taken, _ = downlinks.take_next(first, app_id=APP, device_id="dev-1")
            with db.session() as second:
                assert downlinks.take_next(second, app_id=APP, device_id="dev-1") == (None, 0)
                assert downlinks.expire(second, ttl_seconds=0) == []  # nor does the other expire it meanwhile
        assert taken is not None
        with db.session() as session:
            assert downlinks.take_next(session, app_id=APP, device_id="dev-1") == (None, 0)
            assert [item.state for item in session.scalars(select(QueuedDownlink))] == ["sent"]
    finally:
        db.engine.dispose()


def test_a_key_revoked_by_another_instance_stops_working_even_if_its_notice_was_lost(
    tmp_path: Path, mosquitto: str, postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setenv(POSTGRES_ENV, postgres_server)
    database_url = fresh_database()["ORCH_DATABASE_URL"]
    orch = RunningOrchestrator(
        tmp_path / "a", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_DATABASE_URL=database_url
    ).start()
    try:
        orch.create_application(APP)
        key = orch.create_key(APP, "devices:read")
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{orch.url}/api/v1/applications/{APP}/devices", headers=headers).status_code == 200
        # Revoked as another instance would, but its notice never arrives: the periodic reload catches it.
        with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as connection:
            connection.execute("DELETE FROM api_keys")
        wait_for(
            lambda: httpx.get(f"{orch.url}/api/v1/applications/{APP}/devices", headers=headers).status_code == 401,
            15,
            what="the revoked key refused",
        )
    finally:
        orch.stop()


def test_a_second_instance_on_one_sqlite_database_is_refused_with_why(tmp_path: Path, mosquitto: str) -> None:
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = RunningOrchestrator(
        tmp_path / "a", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_DATABASE_URL=database_url
    ).start()
    try:
        line = start_fails(tmp_path / "b", mosquitto, ORCH_DATABASE_URL=database_url)
        assert line.startswith("cannot start: ORCH_DATABASE_URL: instance ") and "use PostgreSQL" in line, line
    finally:
        first.stop()
