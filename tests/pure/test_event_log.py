"""The event log on a real SQLite file, the listener queues, and the workers' memory of handled messages."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from orchestrator.bus import Listener
from orchestrator.config import EventSettings
from orchestrator.db import Database
from orchestrator.db.models import Application, utcnow
from orchestrator.events.log import EventLog, EventQuery, LoggedEvent, NewEvent
from orchestrator.handler.uplinks import json_depth
from worker_sdk.dedupe import RecentMessages, fingerprint


@pytest.fixture
def log(tmp_path: Path) -> EventLog:
    db = Database(f"sqlite:///{tmp_path / 'log.db'}")
    db.migrate()
    with db.session() as session:
        session.add_all([Application(id="app"), Application(id="other")])
    return EventLog(db, EventSettings(retention_count=100, retention_days=1))


def event(name: str, n: int, app: str = "app", device: str | None = "dev-1", topic: str | None = "t") -> NewEvent:
    return NewEvent(app, name, f'{{"n": {n}}}', device_id=device, topic=topic)


async def test_ids_grow_across_batches_and_applications(log: EventLog) -> None:
    first = await log.insert([event("uplink", n) for n in range(3)], utcnow())
    second = await log.insert([event("uplink", 3, app="other"), event("device.create", 4)], utcnow())
    assert first == [1, 2, 3] and second == [4, 5]
    assert await log.newest_id() == 5


async def test_reads_filter_by_prefix_device_bounds_and_order(log: EventLog) -> None:
    now = utcnow()
    await log.insert([event("uplink", 0), event("uplink.error", 1), event("device.create", 2, device="dev-2")], now)
    await log.insert([event("uplink", 3, app="other"), event("integration.delivery", 4, device=None)], now)

    def names(events: list[LoggedEvent]) -> list[str]:
        return [e.name for e in events]

    assert names(await log.read("app", EventQuery())) == [
        "uplink",
        "uplink.error",
        "device.create",
        "integration.delivery",
    ]
    assert names(await log.read("app", EventQuery(prefixes=("uplink",)))) == ["uplink", "uplink.error"]
    assert names(await log.read("app", EventQuery(prefixes=("uplink.", "device.")))) == [
        "uplink.error",
        "device.create",
    ]
    assert names(await log.read("app", EventQuery(prefixes=("",)))) == names(await log.read("app", EventQuery()))
    assert names(await log.read("app", EventQuery(device_id="dev-2"))) == ["device.create"]
    assert [e.id for e in await log.read("app", EventQuery(after_id=1, before_id=5))] == [2, 3]
    assert [e.id for e in await log.read("app", EventQuery(newest_first=True, limit=2))] == [5, 3]
    assert await log.read("app", EventQuery(since=now + timedelta(seconds=1))) == []
    assert len(await log.read("app", EventQuery(until=now + timedelta(seconds=1)))) == 4
    # A prefix with SQL wildcards matches only literally.
    assert await log.read("app", EventQuery(prefixes=("upl_nk",))) == []


async def test_only_events_with_a_topic_are_published_again(log: EventLog) -> None:
    await log.insert([event("uplink", 0), event("integration.error", 1, topic=None), event("uplink", 2)], utcnow())
    assert [e.id for e in await log.publishable_after(0)] == [1, 3]
    assert [e.id for e in await log.publishable_after(1, limit=1)] == [3]


async def test_retention_by_count_and_age_records_what_it_removed(log: EventLog) -> None:
    old = utcnow() - timedelta(days=2)
    await log.insert([event("uplink", n) for n in range(5)], old)  # ids 1-5: too old
    await log.insert([event("uplink", n) for n in range(150)], utcnow())  # ids 6-155: 50 too many
    await log.insert([event("uplink", 0, app="other")], old)  # id 156
    assert await log.pruned_through("app") == 0
    # Events the broker has not acknowledged yet (after 30 here) stay, however old or many.
    assert await log.prune(protect_after=30) == 30
    assert await log.pruned_through("app") == 30 and await log.pruned_through("other") == 0
    assert await log.prune(protect_after=1000) == 25 + 1
    kept = await log.read("app", EventQuery(limit=1000))
    assert len(kept) == 100 and kept[0].id == 56 and kept[-1].id == 155
    assert await log.pruned_through("app") == 55
    assert await log.pruned_through("other") == 156
    assert await log.prune(protect_after=1000) == 0


async def test_a_listener_that_falls_behind_is_told_once_then_gets_new_events() -> None:
    listener = Listener(limit=2)
    events = [LoggedEvent(n, "app", "uplink", "{}", utcnow()) for n in range(4)]
    for item in events[:3]:
        listener.put(item)
    assert await listener.get() is None  # it lost some: the reader catches up from the log
    assert (await listener.get()).id == 2  # type: ignore[union-attr]
    waiter = asyncio.ensure_future(listener.get())
    await asyncio.sleep(0)
    listener.put(events[3])
    assert (await asyncio.wait_for(waiter, 1)).id == 3  # type: ignore[union-attr]


def test_workers_remember_a_bounded_number_of_handled_messages() -> None:
    recent = RecentMessages(capacity=3)
    keys = [fingerprint("v3/app/devices/d/up", f'{{"n": {n}}}'.encode()) for n in range(4)]
    assert len(set(keys)) == 4
    assert fingerprint("v3/app/devices/d/up", b"x") != fingerprint("v3/app/devices/e/up", b"x")
    for key in keys:
        recent.add(key)
    assert keys[0] not in recent and all(key in recent for key in keys[1:])
    off = RecentMessages(capacity=0)
    off.add(keys[0])
    assert keys[0] not in off


def test_json_depth() -> None:
    assert json_depth(1) == 0 and json_depth({}) == 1 and json_depth([]) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4
