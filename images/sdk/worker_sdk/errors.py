"""Errors a worker raises from `handle` to tell the SDK what to do with a message."""

from __future__ import annotations

from typing import Any


class DeliveryError(Exception):
    """Delivering a message to the target platform failed."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class RetryableError(DeliveryError):
    """A failure that may pass (5xx, 429, timeout, connection refused): retry with back-off."""

    def __init__(self, message: str, *, retry_after: float | None = None, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """A failure that retrying cannot fix (4xx, invalid message): report it and move on."""


class ConfigurationError(Exception):
    """The image's configuration is unusable; each problem names the setting at fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class SetupError(Exception):
    """The target platform is not ready (unreachable, missing topic, no permission): retried with back-off."""
