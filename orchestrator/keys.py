"""Application keys: `ik.<id>.<secret>`, scopes, and the hashes kept instead of the keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from worker_sdk import topics

SCOPES = (
    "messages:read",  # receive uplinks, downlink lifecycle, device and integration events
    "uplinks:write",  # send uplinks as the application's devices
    "downlinks:write",  # push and replace downlinks
    "devices:read",
    "devices:write",
    "integrations:read",
    "manage",  # everything above, plus keys and integrations
)
# What an integration worker gets: enough to sync devices and move messages, nothing to manage.
INTEGRATION_SCOPES = ["messages:read", "downlinks:write", "devices:read"]
MOSQUITTO_ITERATIONS = 101  # Mosquitto's own default for its `$7$` (PBKDF2-SHA512) password hashes


@dataclass(frozen=True)
class NewKey:
    """A freshly made key: the full key is shown once, then only hashes remain."""

    key_id: str
    key: str


def generate() -> NewKey:
    """A new random key."""
    key_id = "ik." + secrets.token_hex(6)
    return NewKey(key_id, f"{key_id}.{secrets.token_urlsafe(32)}")


def key_id_of(key: str) -> str | None:
    """The id part of a key (`ik.<id>`), or None when the text is not shaped like a key."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "ik" or not parts[1] or not parts[2]:
        return None
    return f"{parts[0]}.{parts[1]}"


def secret_hash(key: str) -> str:
    """SHA-256 of the key (keys are long and random, so a fast hash is enough)."""
    return hashlib.sha256(key.encode()).hexdigest()


def matches(key: str, stored_hash: str) -> bool:
    """Constant-time check of a key against its stored hash."""
    return hmac.compare_digest(secret_hash(key), stored_hash)


def mosquitto_hash(password: str) -> str:
    """The password in Mosquitto's password-file format (`$7$`: PBKDF2-SHA512, 12-byte salt)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, MOSQUITTO_ITERATIONS)
    return f"$7${MOSQUITTO_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def expand(scopes: list[str]) -> set[str]:
    """The effective scopes: `manage` implies every other scope."""
    return set(SCOPES) if "manage" in scopes else set(scopes)


def mqtt_grants(app_id: str, scopes: list[str], integration_id: str | None) -> list[tuple[str, str]]:
    """What one key may do on the broker: (`read`|`write`|`readwrite`, topic filter) pairs."""
    effective = expand(scopes)
    prefix = f"v3/{app_id}"
    grants = []
    if "messages:read" in effective:
        grants.append(("read", f"{prefix}/#"))
    if "uplinks:write" in effective:
        grants.append(("write", f"{prefix}/devices/+/up/push"))
        grants += [("write", f"{prefix}/devices/+/{kind}/push") for kind in topics.DEVICE_REPORTS]
        grants.append(("read", f"{prefix}/devices/+/down/deliver"))
    if "downlinks:write" in effective:
        grants.append(("write", f"{prefix}/devices/+/down/push"))
        grants.append(("write", f"{prefix}/devices/+/down/replace"))
    if integration_id:
        # A worker reports events, stats and status of its own integration only.
        grants.append(("readwrite", f"{prefix}/integrations/{integration_id}/#"))
    elif "manage" in effective:
        grants.append(("write", f"{prefix}/integrations/#"))
    return grants
