"""Health: is the orchestrator able to take messages and act (broker, event log, runtime, reconciler)?"""

from __future__ import annotations

from typing import Any

from ..broker.accounts import BrokerAccounts
from ..broker.managed import ManagedBroker
from ..broker.sessions import WorkerSessions
from ..broker.watch import BrokerWatch
from ..bus import Bus
from ..cluster import Cluster
from ..events.log import EventLog
from ..events.outbox import Outbox
from ..reconciler import Reconciler
from ..runtime.base import Runtime
from ..templates import TemplateRegistry


class HealthService:
    """What /healthz reports: healthy while the broker is connected and the database and event log can be written."""

    def __init__(
        self,
        *,
        bus: Bus,
        outbox: Outbox,
        log: EventLog,
        runtime: Runtime,
        templates: TemplateRegistry,
        reconciler: Reconciler,
        broker: ManagedBroker | None,
        accounts: BrokerAccounts,
        watch: BrokerWatch,
        sessions: WorkerSessions,
        cluster: Cluster,
    ) -> None:
        self.bus = bus
        self.outbox = outbox
        self.log = log
        self.runtime = runtime
        self.templates = templates
        self.reconciler = reconciler
        self.broker = broker
        self.accounts = accounts
        self.watch = watch
        self.sessions = sessions
        self.cluster = cluster

    def report(self) -> tuple[bool, dict[str, Any]]:
        """Whether the orchestrator is healthy, and the details."""
        connected = self.bus.connected
        writable = self.outbox.failure is None
        reachable = self.cluster.failure is None
        healthy = connected and writable and reachable
        body: dict[str, Any] = {
            "status": "ok" if healthy else "degraded",
            "broker": "connected" if connected else "disconnected",
            "database": {"status": "ok" if reachable else "failing", "error": self.cluster.failure},
            "event_log": {
                "status": "ok" if writable else "failing",
                "error": self.outbox.failure,
                "unpublished": self.outbox.backlog,
                "published_through": self.outbox.published_through,
                "republished": self.outbox.republished,
                "pruned": self.log.pruned,
            },
            "cluster": self.cluster.snapshot,
            "broker_details": self._broker_details(),
            "worker_sessions_restored": self.sessions.restored,
            "runtime": self.runtime.name,
            "runtime_error": self.reconciler.runtime_failure,
            "templates": len(self.templates.templates),
            "reconciler": {"passes": self.reconciler.passes, "last_pass_seconds": self.reconciler.last_pass_seconds},
        }
        if self.broker is not None:
            body["managed_broker"] = {
                "running": self.broker.running(),
                "restarts": self.broker.restarts,
                "saves": self.broker.saves,
                "listeners": self.broker.listeners,
            }
        return healthy, body

    async def cluster_report(self) -> dict[str, Any]:
        """The instances on this database, and who leads since when (read now)."""
        return await self.cluster.report()

    def _broker_details(self) -> dict[str, Any]:
        """The broker seen from here: where, since when, restarts seen, and the last sync of its accounts."""
        report = self.accounts.report
        return {
            "mode": "managed" if self.broker is not None else "external",
            "url": self.bus.url,
            **self.watch.report(),
            "accounts": {
                "synced_at": report.at.isoformat() if report.at else None,
                "sync_seconds": report.seconds,
                "clients": report.clients,
                "changes": report.changes,
                "errors": report.errors,
                "unmakeable": report.unmakeable,
                "failure": self.accounts.failure,
            },
        }
