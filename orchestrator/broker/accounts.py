"""Broker accounts: every application key (devices, tools, workers) as a broker user with its ACL."""

from __future__ import annotations

from .. import keys as key_rules
from ..db.models import ApiKey
from .managed import ADMIN_USER, BrokerUser, ManagedBroker


class BrokerAccounts:
    """Keeps the broker's users in step with the key table (the managed broker's password and ACL files).

    An external broker manages its own accounts: nothing is written for it.
    """

    def __init__(self, broker: ManagedBroker | None, admin_password: str) -> None:
        self.broker = broker
        self.admin_password = admin_password

    def sync(self, records: list[ApiKey]) -> None:
        """Write every key's account and ACL, plus the orchestrator's own; the broker reloads at once."""
        if self.broker is None:
            return
        # `#` does not cover `$SYS/...`: the orchestrator reads the broker's uptime there (worker sessions).
        admin_acl = ["topic readwrite #", "topic read $SYS/#"]
        users = [BrokerUser(ADMIN_USER, key_rules.mosquitto_hash(self.admin_password), admin_acl)]
        users += [
            BrokerUser(
                record.id,
                record.mqtt_password_hash,
                key_rules.mqtt_acl(record.application_id, record.scopes, record.integration_id),
            )
            for record in records
        ]
        self.broker.write_users(users)
