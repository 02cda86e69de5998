"""The worker SDK: what every integration image uses to talk to the orchestrator's handler."""

from .errors import ConfigurationError, DeliveryError, PermanentError, RetryableError, SetupError
from .registry import Device
from .runner import run_worker
from .settings import HandlerSettings, ImageSettings, WorkerSettings
from .worker import Event, Worker

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "Device",
    "Event",
    "HandlerSettings",
    "ImageSettings",
    "PermanentError",
    "RetryableError",
    "SetupError",
    "Worker",
    "WorkerSettings",
    "run_worker",
]
