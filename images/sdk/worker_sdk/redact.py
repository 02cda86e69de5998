"""Keep secrets out of logs and integration events: every secret value is replaced by `***`."""

from __future__ import annotations

import logging
import os
from typing import Any

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary text


class Redactor:
    """Replaces known secret values wherever they appear in text or JSON-like data."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    @classmethod
    def from_environment(cls) -> Redactor:
        """Secrets named by `WORKER_SECRET_ENV` (set by the orchestrator) plus the handler key."""
        names = [n.strip() for n in os.environ.get("WORKER_SECRET_ENV", "").split(",") if n.strip()]
        names += ["HANDLER_API_KEY", "HANDLER_MQTT_PASSWORD"]
        return cls([os.environ[name] for name in names if os.environ.get(name)])

    def text(self, value: str) -> str:
        """The text with every secret masked."""
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, MASK)
        return value

    def data(self, value: Any) -> Any:
        """A copy of JSON-like data with every secret masked in its strings."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.data(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(item) for item in value]
        return value


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in every record's final message."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor.secrets:
            message = record.getMessage()
            masked = self.redactor.text(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True
