"""Keep secrets out of logs and integration events: every secret value is replaced by `***`."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary text


# A run that could be base64 (standard or URL-safe, padded or not): decoded, it may carry a secret, as an echoed
# `Authorization: Basic base64(user:password)` does.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/_-]{8,}={0,2}")


def encoded_forms(secret: str) -> set[str]:
    """The secret as it may appear written inside URLs, forms and JSON strings."""
    reserved = quote(secret, safe=":/?#[]@!$&'()*+,;=")  # as RFC 6570's {+x} and {#x} write it
    return {secret, quote(secret, safe=""), quote_plus(secret), reserved, json.dumps(secret)[1:-1]}


def _decoded(run: str) -> bytes:
    text = run.rstrip("=")
    text += "=" * (-len(text) % 4)
    for decode in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            return decode(text)
        except (binascii.Error, ValueError):
            continue
    return b""


def secret_strings(value: Any) -> list[str]:
    """The strings a secret value is made of: itself, and for JSON (an object of secret headers, say) each
    string in it, since each may be written out on its own."""
    if isinstance(value, dict):
        return [text for item in value.values() for text in secret_strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in secret_strings(item)]
    if not isinstance(value, str):
        return [str(value)]
    found = [value]
    if value.lstrip().startswith(("{", "[")):
        with contextlib.suppress(ValueError):
            found += secret_strings(json.loads(value))
    return found


class Redactor:
    """Replaces known secret values wherever they appear in text or JSON-like data, in their encoded forms too
    (percent-encoded, JSON-escaped, and inside anything base64)."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        forms = {form for secret in self.secrets for form in encoded_forms(secret)}
        self.forms = sorted((form for form in forms if len(form) >= MIN_SECRET_LENGTH), key=len, reverse=True)
        self._raw = [secret.encode() for secret in self.secrets]

    @classmethod
    def from_environment(cls) -> Redactor:
        """Secrets named by `WORKER_SECRET_ENV` (set by the orchestrator) plus the handler key."""
        names = [n.strip() for n in os.environ.get("WORKER_SECRET_ENV", "").split(",") if n.strip()]
        names += ["HANDLER_API_KEY", "HANDLER_MQTT_PASSWORD"]
        return cls([text for name in names if os.environ.get(name) for text in secret_strings(os.environ[name])])

    def text(self, value: str) -> str:
        """The text with every secret masked."""
        if not self.secrets:
            return value
        for form in self.forms:
            if form in value:
                value = value.replace(form, MASK)
        return BASE64_RUN.sub(self._mask_if_carrying, value)

    def _mask_if_carrying(self, match: re.Match[str]) -> str:
        decoded = _decoded(match.group(0))
        return MASK if decoded and any(secret in decoded for secret in self._raw) else match.group(0)

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
