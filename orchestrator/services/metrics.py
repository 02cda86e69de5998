"""Metrics for Prometheus: every integration's counters and state (from the database, so every instance says the
same), and this instance's own parts (broker connection, event log, reconciler, lease)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session

from worker_sdk.worker import LATENCY_BUCKETS

from ..db import Database
from ..db.models import Integration
from ..runtime.base import WorkerState
from .health import HealthService

OUTCOMES = ("delivered", "failed", "retried", "duplicates", "dead_lettered")
INTEGRATION_LABELS = ["application", "integration"]


def integration_counts(session: Session) -> list[tuple[Any, ...]]:
    """Per integration: ids, enabled, state, restarts and the delivery counters."""
    columns = [Integration.application_id, Integration.id, Integration.enabled, Integration.actual_state]
    columns += [Integration.restart_count, *(getattr(Integration, outcome) for outcome in OUTCOMES)]
    columns += [Integration.delivery_latency]
    return [tuple(row) for row in session.connection().execute(select(*columns))]


class _Snapshot(Collector):
    """The metrics of one scrape, from values read just before."""

    def __init__(self, integrations: list[tuple[Any, ...]], health: HealthService) -> None:
        self.integrations = integrations
        self.health = health

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "iot_integration_messages",
            "Messages an integration's workers handled, by outcome (delivered, failed for good, retried, "
            "duplicates dropped, dead_lettered: parked to be sent again)",
            labels=[*INTEGRATION_LABELS, "outcome"],
        )
        state = GaugeMetricFamily(
            "iot_integration_state",
            "1 for the state the integration's worker is in, 0 for the others",
            labels=[*INTEGRATION_LABELS, "state"],
        )
        enabled = GaugeMetricFamily(
            "iot_integration_enabled", "1 if the integration is enabled", labels=INTEGRATION_LABELS
        )
        restarts = CounterMetricFamily(
            "iot_integration_restarts", "Times the integration's worker was started again", labels=INTEGRATION_LABELS
        )
        latency = HistogramMetricFamily(
            "iot_integration_delivery_latency_seconds",
            "From the handler receiving a message to its target accepting it",
            labels=INTEGRATION_LABELS,
        )
        states = [item.value for item in WorkerState if item != WorkerState.MISSING]
        for app_id, integration_id, is_enabled, actual, restart_count, *counts, histogram in self.integrations:
            buckets = histogram.get("buckets") if isinstance(histogram, dict) else None
            if isinstance(buckets, list) and len(buckets) == len(LATENCY_BUCKETS) + 1:
                bounds = [*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"]
                cumulative = list(itertools.accumulate(buckets))
                latency.add_metric(
                    [app_id, integration_id], list(zip(bounds, cumulative, strict=True)), histogram.get("sum", 0.0)
                )
            ids = [app_id, integration_id]
            for outcome, value in zip(OUTCOMES, counts, strict=True):
                messages.add_metric([*ids, outcome], value or 0)
            for name in states:
                state.add_metric([*ids, name], 1.0 if actual == name else 0.0)
            enabled.add_metric(ids, 1.0 if is_enabled else 0.0)
            restarts.add_metric(ids, restart_count or 0)
        yield from (messages, state, enabled, restarts, latency)
        yield from self._orchestrator()

    def _orchestrator(self) -> Iterator[Metric]:
        health = self.health
        _, report = health.report()

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, value=value)

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, text, value=value)

        yield gauge(
            "iot_broker_connected", "1 while this instance is connected to the broker", report["broker"] == "connected"
        )
        yield counter("iot_broker_restarts", "Broker restarts this instance has seen", health.watch.restarts)
        yield gauge(
            "iot_database_up", "1 while this instance can use the database", report["database"]["status"] == "ok"
        )
        yield gauge(
            "iot_event_log_writable", "1 while the event log can be written", report["event_log"]["status"] == "ok"
        )
        yield gauge(
            "iot_event_log_unpublished_events",
            "Events this instance logged that the broker has not acknowledged",
            health.outbox.backlog,
        )
        yield counter(
            "iot_event_log_republished_events",
            "Events published again after the broker may have lost them",
            health.outbox.republished,
        )
        yield counter("iot_event_log_pruned_events", "Events retention removed", health.log.pruned)
        yield counter("iot_reconcile_passes", "Reconcile passes this instance ran", health.reconciler.passes)
        yield gauge(
            "iot_reconcile_last_pass_seconds",
            "How long the last reconcile pass took",
            health.reconciler.last_pass_seconds or 0.0,
        )
        yield gauge("iot_runtime_up", "1 while the runtime answers", health.reconciler.runtime_failure is None)
        yield gauge("iot_cluster_leader", "1 while this instance leads (runs the reconciler)", health.cluster.leading)
        yield gauge(
            "iot_cluster_instances",
            "Instances seen on this database",
            len(health.cluster.snapshot.get("instances", [])),
        )


class MetricsService:
    """The Prometheus exposition of /metrics."""

    def __init__(self, db: Database, health: HealthService) -> None:
        self.db = db
        self.health = health

    async def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, read now."""
        integrations = await self.db.read(integration_counts)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Snapshot(integrations, self.health))
        return generate_latest(registry)
