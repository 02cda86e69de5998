"""Services: what the API calls; each owns a resource's sequence (write, cache and event, broker, reconciler)."""

from __future__ import annotations

from dataclasses import dataclass

from ..templates import TemplateRegistry
from .applications import ApplicationService
from .dead_letters import DeadLetterService
from .devices import DeviceService
from .events import EventService
from .health import HealthService
from .integrations import IntegrationService
from .keys import KeyService, Principal
from .metrics import MetricsService


@dataclass(frozen=True)
class Services:
    """Every service, as the API routes reach them."""

    applications: ApplicationService
    keys: KeyService
    devices: DeviceService
    integrations: IntegrationService
    dead_letters: DeadLetterService
    events: EventService
    health: HealthService
    metrics: MetricsService
    templates: TemplateRegistry


__all__ = ["Principal", "Services"]
