"""The cluster: the instances that share one database, and the one among them that leads (runs the reconciler).

Leadership is a lease in the database, the way client-go does it: the leader renews it every third of its
duration; a follower takes it over once it has seen the same record, unchanged, for a whole duration by
its own clock (so clocks of different machines never need to agree). Each take-over increments
`transitions`, the fencing token: the leader checks it before every action, so an old leader that was
paused and resumes after losing the lease does nothing. The leader counts itself leader only until its
last successful renewal plus the duration, less a margin, also by its own clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from .db import Database
from .db.models import Instance, utcnow
from .errors import OrchestratorError
from .store import cluster as store

log = logging.getLogger(__name__)
LEASE = "reconciler"
SAFETY_MARGIN_SECONDS = 2.0  # the leader stops acting this long before a follower may take over (at most)


class Successor(Protocol):
    """Takes over what an instance that died leaves behind (see `succession`)."""

    async def take_over(self, instance_id: str, published_through: int) -> None: ...


class ConfigurationMismatch(OrchestratorError):
    """This instance's configuration differs from that of instances already running on the same database."""


@dataclass(frozen=True)
class Identity:
    """Who this instance is and what it runs with (fingerprints, never the secrets)."""

    instance_id: str
    api_url: str
    templates_fingerprint: str
    secret_fingerprint: str


def templates_fingerprint(templates: dict[str, Any]) -> str:
    """A digest of the loaded templates (id, version and all they say)."""
    text = "\n".join(templates[key].model_dump_json() for key in sorted(templates))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def secret_fingerprint(secret_key: str) -> str:
    """A digest of the key that seals secrets: equal keys match, and it reveals nothing of the key."""
    sealing_key = secret_key.split(",")[0].strip()
    return hmac.new(sealing_key.encode(), b"iot-orchestrator secret key fingerprint", hashlib.sha256).hexdigest()[:16]


class Cluster:
    """This instance's heartbeat, the other instances, and the leader's lease."""

    def __init__(
        self,
        db: Database,
        identity: Identity,
        lease_seconds: float,
        *,
        own_broker: bool = False,
        single: bool = False,
        progress: Callable[[int], int] | None = None,
        successor: Successor | None = None,
    ) -> None:
        self.db = db
        self.identity = identity
        self.lease_seconds = lease_seconds
        self.own_broker = own_broker  # a managed broker: no other instance can share it
        self.single = single  # SQLite: one instance only
        # Given the newest id in the log: up to which id this instance's events are all published.
        self.progress = progress
        self.successor = successor
        self._beats: dict[str, tuple[datetime, float]] = {}  # per other instance: its last seen_at, when it changed
        self._succession: asyncio.Task[None] | None = None
        self.token: int | None = None  # the lease's transitions while we hold it
        self.leading_since: datetime | None = None
        self._valid_until = 0.0  # monotonic: after this we do not act without a renewal
        self._observed: store.LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic: when the observed record last changed
        self._started_at = utcnow()
        self._task: asyncio.Task[None] | None = None
        self.snapshot: dict[str, Any] = {}  # the last report, for /healthz (refreshed every round)
        self.failure: str | None = None  # why the last round could not reach the database, while it cannot

    @property
    def instance_id(self) -> str:
        return self.identity.instance_id

    @property
    def leading(self) -> bool:
        """True while this instance holds the lease and its last renewal is recent enough to act on."""
        return self.token is not None and time.monotonic() < self._valid_until

    async def others_alive(self) -> list[str]:
        """The other instances seen within a lease's duration (read now; as of the last round if it cannot be)."""
        try:
            self.snapshot = await self.report()
        except OrchestratorError as err:
            log.warning("could not see the other instances now: %s", err.detail)
        return [item["id"] for item in self.snapshot.get("instances", []) if item["id"] != self.instance_id]

    async def join(self) -> None:
        """At start: refuse a configuration other instances do not share, say we run, try to lead."""
        seen_since = utcnow() - timedelta(seconds=self.lease_seconds)
        others = [
            instance
            for instance in await self.db.run(store.live_instances, seen_since=seen_since)
            if instance.id != self.instance_id
        ]
        if others and self.single:
            raise ConfigurationMismatch(
                f"ORCH_DATABASE_URL: instance {others[0].id} ({others[0].api_url}) runs on this SQLite database; "
                "SQLite serves one instance (one writer, on one machine); to run several, use PostgreSQL"
            )
        if others and self.own_broker:
            raise ConfigurationMismatch(
                f"ORCH_BROKER__MODE: instance {others[0].id} ({others[0].api_url}) runs on this database; instances "
                "share one external broker (ORCH_BROKER__MODE=external), not each a managed one"
            )
        for other in others:
            if other.templates_fingerprint != self.identity.templates_fingerprint:
                raise ConfigurationMismatch(
                    f"ORCH_TEMPLATES_DIR: instance {other.id} ({other.api_url}) runs other templates "
                    f"({other.templates_fingerprint}, here {self.identity.templates_fingerprint}); give every "
                    "instance the same template files"
                )
            if other.secret_fingerprint != self.identity.secret_fingerprint:
                raise ConfigurationMismatch(
                    f"ORCH_SECRET_KEY: instance {other.id} ({other.api_url}) seals secrets with another key; give "
                    "every instance the same ORCH_SECRET_KEY"
                )
        await self._beat()
        await self.step()
        self.snapshot = await self.report()

    def start(self) -> None:
        """Beat and renew (or watch) the lease every third of its duration."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self, *, published_all: bool = True) -> None:
        """Stop; a leader gives the lease up so another instance leads at once.

        An instance whose events are not all published stays on record (the leader publishes them).
        """
        for task in (self._task, self._succession):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        try:
            if self.token is not None:
                await self.db.run(store.release, name=LEASE, me=self.instance_id)
            if published_all:
                await self.db.run(store.forget_instance, instance_id=self.instance_id)
            else:
                await self._beat()
        except OrchestratorError as err:
            log.warning("could not leave the cluster cleanly: %s", err.detail)
        self.token = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._beat()
                await self.step()
                self.snapshot = await self.report()
                await self._succeed_the_dead()
                if self.failure:
                    log.info("the database answers again")
                self.failure = None
            except OrchestratorError as err:  # the database is away: a leader stops acting once its lease ran out
                log.warning("cluster: %s", err.detail)
                self.failure = err.detail
                if self.token is not None and not self.leading:
                    log.error("lost the lead: the lease could not be renewed in time")
                    self.token = None
            except Exception:
                log.exception("cluster step failed")

    async def _beat(self) -> None:
        published_through = 0
        if self.progress is not None:
            published_through = self.progress(await self.db.run(store.newest_event_id))
        now = utcnow()
        instance = Instance(
            id=self.instance_id,
            api_url=self.identity.api_url,
            started_at=self._started_at,
            seen_at=now,
            templates_fingerprint=self.identity.templates_fingerprint,
            secret_fingerprint=self.identity.secret_fingerprint,
            published_through=published_through,
        )
        await self.db.run(store.heartbeat, instance=instance)

    async def _succeed_the_dead(self) -> None:
        """The leader takes over from instances whose heartbeat stopped for a lease's duration (by its clock).

        Every instance watches the heartbeats, so a follower that becomes leader because the leader died
        takes over from it at once.
        """
        now = time.monotonic()
        dead = []
        instances = await self.db.run(store.all_instances)
        self._beats = {key: value for key, value in self._beats.items() if key in {i.id for i in instances}}
        for instance in instances:
            if instance.id == self.instance_id:
                continue
            seen = self._beats.get(instance.id)
            if seen is None or seen[0] != instance.seen_at:
                self._beats[instance.id] = (instance.seen_at, now)
            elif now - seen[1] >= self.lease_seconds:
                dead.append(instance)
        if not dead or not self.leading or self.successor is None:
            return
        if self._succession is None or self._succession.done():  # one at a time; the next round looks again
            self._succession = asyncio.create_task(self._take_over(dead))

    async def _take_over(self, dead: list[Instance]) -> None:
        assert self.successor is not None
        for instance in dead:
            try:
                if not await self.confirm():
                    return
                await self.successor.take_over(instance.id, instance.published_through)
                # Forgotten only if it did not come back meanwhile (it beats again, and is live again).
                await self.db.run(store.forget_instance, instance_id=instance.id, seen_at=instance.seen_at)
                self._beats.pop(instance.id, None)
            except OrchestratorError as err:
                log.warning("could not take over from instance %s yet: %s", instance.id, err.detail)
            except Exception:
                log.exception("could not take over from instance %s", instance.id)

    async def step(self) -> None:
        """One round: renew the lease we hold, or take it over if it is free or expired, or watch it."""
        before = time.monotonic()  # the leader's validity counts from before its renewal is written
        lease = await self.db.run(store.get_lease, LEASE)
        seen = time.monotonic()  # a follower's observation counts from after the read (client-go does the same)
        record = (lease.holder, lease.transitions, lease.renewed_at) if lease else None
        if record != self._observed:
            self._observed, self._observed_at = record, seen
        expired = lease is None or lease.holder is None or seen - self._observed_at >= lease.duration_seconds
        taken = await self.db.run(
            store.acquire_or_renew,
            name=LEASE,
            me=self.instance_id,
            duration=self.lease_seconds,
            observed=record,
            expired=expired,
        )
        if taken is None:
            if self.token is not None:
                log.warning("lost the lead to %s", lease.holder if lease else "another instance")
            self.token, self.leading_since = None, None
            return
        if self.token != taken.transitions:
            log.info("leading (lease %s, token %d)", LEASE, taken.transitions)
            self.leading_since = taken.acquired_at
        self.token = taken.transitions
        self._valid_until = before + self.lease_seconds - min(SAFETY_MARGIN_SECONDS, self.lease_seconds / 5)
        self._observed, self._observed_at = (taken.holder, taken.transitions, taken.renewed_at), seen

    async def confirm(self) -> bool:
        """The fence, checked before every action of the leader: the lease is still ours, under our token."""
        token = self.token
        if token is None or not self.leading:
            return False
        return await self.db.run(store.holds, name=LEASE, me=self.instance_id, token=token)

    async def report(self) -> dict[str, Any]:
        """Who leads since when, and the instances seen within a lease's duration."""
        seen_since = utcnow() - timedelta(seconds=self.lease_seconds)
        lease = await self.db.run(store.get_lease, LEASE)
        instances = await self.db.run(store.live_instances, seen_since=seen_since)
        return {
            "instance": self.instance_id,
            "leading": self.leading,
            "leader": {
                "instance": lease.holder if lease else None,
                "since": lease.acquired_at.isoformat() if lease and lease.holder and lease.acquired_at else None,
                "renewed_at": lease.renewed_at.isoformat() if lease and lease.renewed_at else None,
                "transitions": lease.transitions if lease else 0,
                "lease_seconds": self.lease_seconds,
            },
            "instances": [
                {
                    "id": item.id,
                    "api_url": item.api_url,
                    "started_at": item.started_at.isoformat(),
                    "seen_at": item.seen_at.isoformat(),
                }
                for item in instances
            ],
        }
