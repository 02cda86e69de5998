"""Secrets at rest: field values and worker keys are encrypted in the database (Fernet)."""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import OrchestratorError


class SecretBox:
    """Encrypts and decrypts JSON values with the orchestrator's secret key."""

    def __init__(self, key: str) -> None:
        # Several keys, comma-separated, rotate: the first seals, any of them opens.
        try:
            self.keys = [Fernet(item.strip().encode()) for item in key.split(",") if item.strip()]
            self._fernet = MultiFernet(self.keys)
        except ValueError as err:
            raise OrchestratorError(
                "ORCH_SECRET_KEY is not a Fernet key (32 url-safe base64-encoded bytes), or a comma-separated "
                "list of them, newest first; make one with: "
                'python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"'
            ) from err

    def seal(self, value: Any) -> str:
        """Encrypt a JSON-serializable value."""
        return self._fernet.encrypt(json.dumps(value).encode()).decode()

    def open(self, token: str, default: Any = None) -> Any:
        """Decrypt a value sealed with the same key; OrchestratorError if the key changed."""
        if not token:
            return default
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken as err:
            raise OrchestratorError("a stored secret cannot be decrypted: was ORCH_SECRET_KEY changed?") from err

    def reseal(self, token: str) -> str:
        """The same value sealed with the first key (after a key rotation)."""
        if not token:
            return token
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken as err:
            raise OrchestratorError("a stored secret cannot be decrypted: was ORCH_SECRET_KEY changed?") from err
