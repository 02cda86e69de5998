"""The reconciler: drives what runs toward what is wanted, restarts crashed workers with back-off."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.mqtt import MqttError

from .bus import Bus
from .cluster import Cluster
from .config import Settings
from .db import Database
from .db.models import Integration, utcnow
from .errors import NotLeader, OrchestratorError, RuntimeFailure
from .integrations.spec import build_spec
from .runtime.base import MISSING, Runtime, WorkerSpec, WorkerState, WorkerStatus
from .secretbox import SecretBox
from .store import integrations as store
from .templates import TemplateRegistry

log = logging.getLogger(__name__)
NOT_CONNECTED_WARNING_SECONDS = 30.0
REQUEST_TOPIC = "orchestrator/reconcile"  # instances that do not lead ask the leader to act
FULL_PASS_EVERY = 12  # with the default 5 s interval: a close look at everything once a minute


@dataclass
class Backoff:
    """Consecutive crashes of one integration and when the next restart may happen."""

    failures: int = 0
    next_attempt: float = 0.0
    counted: str | None = None  # start time of the crash already counted
    running_since: float | None = None


@dataclass
class Observed:
    """What one pass concluded for an integration; written to its record when it changed."""

    actual_state: WorkerState
    last_error: str | None
    restart_count: int
    runtime_handle: dict[str, Any] | None
    config_hash: str | None
    template_version: str  # of the template the running worker was built from


class Reconciler:
    """One loop for all integrations; API calls can also reconcile one integration right away."""

    def __init__(
        self,
        *,
        settings: Settings,
        db: Database,
        bus: Bus,
        runtime: Runtime,
        templates: TemplateRegistry,
        box: SecretBox,
        cluster: Cluster,
    ) -> None:
        self.settings = settings
        self.cluster = cluster
        self.db = db
        self.bus = bus
        self.runtime = runtime
        self.templates = templates
        self.box = box
        self._connected: dict[tuple[str, str], dict[int, bool]] = {}  # what each replica last said of itself
        self._wake = asyncio.Event()
        self._locks: dict[str, asyncio.Lock] = {}
        self._backoff: dict[str, Backoff] = {}
        self._restart: set[str] = set()
        self._runtime_restarts: dict[str, int] = {}  # restarts the runtime did on its own (Docker policy)
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.last_pass_seconds: float | None = None
        self.runtime_failure: str | None = None  # why the runtime cannot be asked what runs, while it cannot
        bus.subscribe(topics.integration_topic("+", "+", "status/+"), self._on_worker_status)
        bus.subscribe(REQUEST_TOPIC, self._on_request)

    def start(self) -> None:
        """Run the loop in the background."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the loop (workers keep running unless the runtime stops them on close)."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def wake(self) -> None:
        """Ask for a pass now instead of at the next interval."""
        self._wake.set()

    async def _on_worker_status(self, topic: str, payload: bytes) -> None:
        """A replica's retained status (`running`, `stopped`, or `offline` from its will): readiness."""
        key = topics.replica_topic(topic, "status")
        if key is None:
            return
        try:
            running = bool(payload) and json.loads(payload).get("state") == "running"
        except (ValueError, UnicodeDecodeError, AttributeError, RecursionError):
            running = False
        self._connected.setdefault(key[:2], {})[key[2]] = running
        self.wake()

    def _ready(self, record: Integration) -> bool:
        """True when every replica said it is running (connected and subscribed)."""
        replicas = self._connected.get((record.application_id, record.id), {})
        return all(replicas.get(replica, False) for replica in range(record.replicas))

    async def restart(self, app_id: str, integration_id: str) -> None:
        """Replace this integration's worker with a fresh one (the API's restart), here or by the leader."""
        if not self.cluster.leading:
            await self._ask_leader({"application_id": app_id, "integration_id": integration_id, "restart": True})
            return
        self._restart.add(Integration(application_id=app_id, id=integration_id).runtime_name)
        await self.reconcile_one(app_id, integration_id)

    async def _fence(self) -> None:
        """Before every action: NotLeader unless the lease is still ours (a paused old leader must not act)."""
        if not await self.cluster.confirm():
            raise NotLeader(f"instance {self.cluster.instance_id} does not hold the lease: it leaves workers alone")

    async def _ask_leader(self, request: dict[str, Any]) -> None:
        """Another instance leads: it acts on this request (and on its next pass anyway)."""
        try:
            await self.bus.publish(REQUEST_TOPIC, request)
        except MqttError as err:
            log.warning("could not ask the leader to act (its next pass will): %s", err)

    async def _on_request(self, topic: str, payload: bytes) -> None:
        """A request from an instance that does not lead: the leader acts on it."""
        if not self.cluster.leading:
            return
        try:
            request = json.loads(payload)
            if "remove" in request:
                item = request["remove"]
                record = Integration(
                    application_id=str(item["application_id"]), id=str(item["id"]), replicas=int(item["replicas"])
                )
                await self.remove(record)
            elif request.get("restart") is True:
                await self.restart(str(request["application_id"]), str(request["integration_id"]))
            else:
                await self.reconcile_one(str(request["application_id"]), str(request["integration_id"]))
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("ignoring a malformed request on %s", topic)
        except OrchestratorError as err:
            log.warning("request on %s: %s", topic, err.detail)

    async def _loop(self) -> None:
        interval = self.settings.runtime.reconcile_interval_seconds
        while True:
            try:
                if self.cluster.leading:
                    await self.reconcile_all()
            except OrchestratorError as err:  # e.g. the Docker engine is down: say so, without a traceback
                log.error("reconcile pass failed: %s; next pass in %.0f s", err.detail, interval)
            except Exception:
                log.exception("reconcile pass failed; next pass in %.0f s", interval)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()

    async def reconcile_all(self) -> None:
        """One pass: remove workers of deleted integrations, then reconcile every integration."""
        started = time.monotonic()
        # Workers first: a worker listed here had its record created before the query below.
        try:
            workers = await self.runtime.list_workers()
        except RuntimeFailure as err:
            # Nothing is started or removed blind; every enabled integration says why nothing happens.
            if self.runtime_failure != err.detail:
                self.runtime_failure = err.detail
                await self.db.run(store.note_error, f"{self.runtime.name} runtime: {err.detail}")
            raise
        self.runtime_failure = None
        records = await self.db.read(store.integrations_to_check)
        names = {record.runtime_name for record in records}
        for name in workers.keys() - names:
            # Under the lock: the API's delete may be removing the same worker right now.
            async with self._lock(name):
                log.info("removing %s: its integration no longer exists", name)
                await self._fence()
                await self.runtime.stop(name)
        # Every pass checks running integrations cheaply; every FULL_PASS_EVERY-th looks at each closely.
        full = self.passes % FULL_PASS_EVERY == 0
        for record in records:
            await asyncio.sleep(0)  # let API requests in between: a pass over hundreds takes a while
            if not full and self._steady(record, workers.get(record.runtime_name, MISSING)):
                continue
            try:
                await self.reconcile(record)
            except OrchestratorError as err:
                log.error("could not reconcile %s: %s", record.runtime_name, err.detail)
            except Exception:
                log.exception("could not reconcile %s", record.runtime_name)
        self.passes += 1
        self.last_pass_seconds = time.monotonic() - started

    def _steady(self, record: Integration, status: WorkerStatus) -> bool:
        """True when nothing can have changed for this integration since its last recorded state."""
        name = record.runtime_name
        if name in self._restart:
            return False
        if not record.enabled:
            return status.state == WorkerState.MISSING and record.actual_state == WorkerState.STOPPED
        template = self.templates.templates.get(record.template_id)
        if template is None or template.version != record.template_version or status.state != WorkerState.RUNNING:
            return False
        if status.config_hash != record.config_hash:
            return False
        if int(status.handle.get("restarts", 0)) != self._runtime_restarts.get(name, -1):
            return False
        return record.actual_state == (WorkerState.RUNNING if self._ready(record) else WorkerState.STARTING)

    async def reconcile_one(self, app_id: str, integration_id: str) -> None:
        """Reconcile one integration now (after an API change)."""
        record = await self.db.run(store.get_integration, app_id, integration_id)
        await self.reconcile(record)

    async def remove(self, record: Integration) -> None:
        """Stop a deleted integration's worker and clear what it left on the broker."""
        if not self.cluster.leading:
            item = {"application_id": record.application_id, "id": record.id, "replicas": record.replicas}
            await self._ask_leader({"remove": item})
            return
        async with self._lock(record.runtime_name):
            await self._fence()
            await self.runtime.stop(record.runtime_name)
            self._backoff.pop(record.runtime_name, None)
            self._connected.pop((record.application_id, record.id), None)
            await self._clear_replicas(record, range(record.replicas))

    async def _clear_replicas(self, record: Integration, replicas: range) -> None:
        """Remove the broker sessions and retained status of replicas that no longer run."""
        app_id, integration_id = record.application_id, record.id
        await self.bus.forget_sessions([topics.worker_client_id(app_id, integration_id, r) for r in replicas])
        try:
            for replica in replicas:
                for kind in ("status", "session"):
                    topic = topics.integration_topic(app_id, integration_id, f"{kind}/{replica}")
                    await self.bus.publish(topic, b"", retain=True)
        except MqttError as err:  # a stale status is harmless; failing the delete for it is not
            log.warning("could not clear the status of %s's replicas: %s", record.runtime_name, err)

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def reconcile(self, record: Integration) -> None:
        """Compare wanted and actual state for one integration, act, and record the outcome."""
        if not self.cluster.leading:
            await self._ask_leader({"application_id": record.application_id, "integration_id": record.id})
            return
        async with self._lock(record.runtime_name):
            # Read the record again under the lock: the API may have changed or deleted it meanwhile.
            current = await self.db.run(lambda session: session.get(Integration, (record.application_id, record.id)))
            if current is None:
                return  # deleted: `remove` took care of the worker
            status = await self.runtime.status(current.runtime_name)
            observed = await self._act(current, status)
            await self._record(current, observed)

    async def _act(self, record: Integration, status: WorkerStatus) -> Observed:
        name = record.runtime_name
        observed = Observed(
            WorkerState(record.actual_state),
            record.last_error,
            record.restart_count,
            record.runtime_handle,
            record.config_hash,
            record.template_version,
        )
        active = status.state in (WorkerState.RUNNING, WorkerState.STARTING, WorkerState.FAILED)
        template = self.templates.templates.get(record.template_id)
        if not record.enabled or template is None:
            if active:
                await self._fence()
                await self.runtime.stop(name)
            self._backoff.pop(name, None)
            self._restart.discard(name)
            observed.runtime_handle = None
            if template is None and record.enabled:
                observed.actual_state = WorkerState.FAILED
                observed.last_error = f"template {record.template_id} is not available on this orchestrator"
            else:
                observed.actual_state = WorkerState.STOPPED
            return observed
        try:
            spec = build_spec(record, template, self.box, self.settings, self.runtime)
        except OrchestratorError as err:
            if active:
                await self._fence()
                await self.runtime.stop(name)
            observed.actual_state = WorkerState.FAILED
            observed.last_error = f"configuration no longer valid: {err.detail}"
            return observed
        backoff = self._backoff.setdefault(name, Backoff())
        now = time.monotonic()
        if name in self._restart or (active and status.config_hash != spec.config_hash):
            self._restart.discard(name)
            observed = await self._start(record, spec, observed, reason="restart or new configuration")
            if observed.actual_state == WorkerState.STARTING and status.replicas > spec.replicas:
                # Fewer replicas than before: the sessions of the ones gone would keep a share of the
                # messages for ever.
                await self._clear_replicas(record, range(spec.replicas, status.replicas))
            return observed
        if status.state in (WorkerState.MISSING, WorkerState.STOPPED):
            if backoff.failures and now < backoff.next_attempt:
                return observed  # the last start failed: wait for the back-off
            if backoff.failures:
                observed.restart_count += 1
            return await self._start(record, spec, observed, reason="not running")
        if status.state == WorkerState.FAILED:
            crash = status.started_at.isoformat() if status.started_at else "unknown"
            if backoff.counted != crash:
                backoff.counted, backoff.running_since = crash, None
                backoff.failures += 1
                delay = min(
                    self.settings.runtime.restart_backoff_max_seconds,
                    self.settings.runtime.restart_backoff_initial_seconds * 2 ** (backoff.failures - 1),
                )
                backoff.next_attempt = now + delay
                asyncio.get_running_loop().call_later(delay, self.wake)
                log.warning("%s crashed (%s); restarting in %.0f s", name, status.message, delay)
                observed.actual_state, observed.last_error = WorkerState.FAILED, status.message
            if now >= backoff.next_attempt:
                observed.restart_count += 1
                return await self._start(record, spec, observed, reason="crashed")
            return observed
        # Running as far as the runtime can tell: ready once every replica reported in.
        restarts = int(status.handle.get("restarts", 0))
        seen = self._runtime_restarts.setdefault(name, restarts)
        if restarts > seen:
            observed.restart_count += restarts - seen
            observed.last_error = f"the worker exited and {self.runtime.name} restarted it ({restarts} restarts)"
            self._runtime_restarts[name] = restarts
            backoff.running_since = None
        backoff.running_since = backoff.running_since or now
        if now - backoff.running_since >= self.settings.runtime.stable_after_seconds:
            backoff.failures = 0
        if self._ready(record):
            observed.actual_state = WorkerState.RUNNING
        else:
            observed.actual_state = WorkerState.STARTING
            if now - backoff.running_since >= NOT_CONNECTED_WARNING_SECONDS:
                tail = " | ".join((await self.runtime.logs(name, 3))[-3:])
                observed.last_error = (
                    f"the worker has not connected to the handler after "
                    f"{NOT_CONNECTED_WARNING_SECONDS:.0f} s; last log lines: {tail}"
                )
        observed.runtime_handle = status.handle or observed.runtime_handle
        observed.config_hash = spec.config_hash
        observed.template_version = template.version
        return observed

    async def _start(self, record: Integration, spec: WorkerSpec, observed: Observed, reason: str) -> Observed:
        log.info("starting %s (%s) on the %s runtime", spec.name, reason, self.runtime.name)
        self._runtime_restarts.pop(spec.name, None)
        self._connected.pop((record.application_id, record.id), None)  # old reports must not count
        backoff = self._backoff.setdefault(spec.name, Backoff())
        backoff.running_since = None
        await self._fence()
        try:
            observed.runtime_handle = await self.runtime.start(spec)
        except OrchestratorError as err:
            backoff.failures += 1
            delay = min(
                self.settings.runtime.restart_backoff_max_seconds,
                self.settings.runtime.restart_backoff_initial_seconds * 2 ** (backoff.failures - 1),
            )
            backoff.next_attempt = time.monotonic() + delay
            asyncio.get_running_loop().call_later(delay, self.wake)
            observed.actual_state, observed.last_error = WorkerState.FAILED, err.detail
            await self.runtime.stop(spec.name)
            return observed
        observed.actual_state = WorkerState.STARTING
        observed.config_hash = spec.config_hash
        observed.template_version = spec.template_version
        return observed

    async def _record(self, record: Integration, observed: Observed) -> None:
        changed = (
            observed.actual_state != record.actual_state
            or observed.last_error != record.last_error
            or observed.restart_count != record.restart_count
            or observed.runtime_handle != record.runtime_handle
            or observed.config_hash != record.config_hash
            or observed.template_version != record.template_version
            or record.runtime != self.runtime.name
        )
        if not changed:
            return

        def save(session: Session) -> None:
            current = session.get(Integration, (record.application_id, record.id))
            if current is None:
                return  # deleted meanwhile
            if observed.actual_state != current.actual_state:
                current.state_since = utcnow()
            if observed.last_error != current.last_error:
                current.last_error_at = utcnow()
            current.actual_state = observed.actual_state
            current.last_error = observed.last_error
            current.restart_count = observed.restart_count
            current.runtime_handle = observed.runtime_handle
            current.config_hash = observed.config_hash
            current.template_version = observed.template_version
            current.runtime = self.runtime.name

        await self.db.run(save)
        record.actual_state, record.last_error = observed.actual_state, observed.last_error
