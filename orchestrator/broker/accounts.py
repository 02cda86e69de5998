"""Broker accounts: keeps the broker's clients and roles (dynamic security plugin) in step with the key table.

The same mechanism serves the managed and an external Mosquitto: commands on `$CONTROL/dynamic-security/v1`,
sent by the orchestrator's admin account over the bus. Creating or revoking a key syncs at once (a
revoked key's client is deleted, which also closes its connections); every (re)connect of the bus syncs
again, so a broker that restarted or lost its accounts gets them back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker_sdk.mqtt import MqttError

from ..bus import Bus
from ..db import Database
from ..errors import BrokerError, OrchestratorError
from ..secretbox import SecretBox
from ..store import keys as key_store
from . import dynsec

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_SECONDS = 10.0
RETRY_SECONDS = 5.0
COMMANDS_PER_MESSAGE = 200  # the plugin saves its file once per message: batches, but not endless ones


@dataclass
class SyncReport:
    """What the last sync did, for /healthz."""

    at: datetime | None = None
    seconds: float = 0.0
    clients: int = 0
    changes: int = 0
    errors: list[str] = field(default_factory=list)


class BrokerAccounts:
    """Sends dynamic-security commands and keeps every key's client and role on the broker."""

    def __init__(self, db: Database, bus: Bus, box: SecretBox, admin_username: str, tenant: str | None) -> None:
        self.db = db
        self.bus = bus
        self.admin_username = admin_username
        self.box = box
        self.tenant = tenant
        self.report = SyncReport()
        self._prefix = secrets.token_hex(4) + "-"  # correlation data of this instance's commands
        self._numbers = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self._synced_for = 0  # the bus connection the last complete sync ran in
        self._sync_task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why the last sync after a connect failed, until one succeeds
        bus.subscribe(dynsec.RESPONSE_TOPIC, self._on_response)
        bus.on_connect(self._on_connect)

    async def request(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands and return the plugin's responses, in order; BrokerError if it does not answer."""
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            responses += await self._request_batch(commands[start : start + COMMANDS_PER_MESSAGE])
        return responses

    async def _request_batch(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        tagged = []
        futures = []
        for command in commands:
            correlation = f"{self._prefix}{next(self._numbers)}"
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting[correlation] = future
            futures.append(future)
            tagged.append(command | {"correlationData": correlation})
        try:
            await self.bus.publish(dynsec.CONTROL_TOPIC, json.dumps({"commands": tagged}))
            async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
                return list(await asyncio.gather(*futures))
        except MqttError as err:
            raise BrokerError(f"could not send accounts to the broker: {err}") from err
        except TimeoutError as err:
            raise BrokerError(
                f"the broker at {self.bus.url} did not answer on {dynsec.CONTROL_TOPIC} within "
                f"{REQUEST_TIMEOUT_SECONDS:.0f} s: load Mosquitto's dynamic security plugin (docs/broker.md) and "
                "give ORCH_BROKER__USERNAME its admin role"
            ) from err
        finally:
            for command in tagged:
                self._waiting.pop(command["correlationData"], None)

    async def _on_response(self, topic: str, payload: bytes) -> None:
        try:
            responses = json.loads(payload)["responses"]
        except (ValueError, KeyError, TypeError, RecursionError):
            log.warning("ignoring a malformed dynamic-security response")
            return
        for response in responses if isinstance(responses, list) else []:
            future = self._waiting.get(str(response.get("correlationData"))) if isinstance(response, dict) else None
            if future is not None and not future.done():
                future.set_result(response)

    async def _on_connect(self) -> None:
        # After every (re)connect: a broker that restarted may have lost accounts, or missed revocations.
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._sync_while_behind())

    async def _sync_while_behind(self) -> None:
        """Sync until a sync has completed during the current connection; retry every few seconds on failure."""
        while self.bus.connected and self._synced_for < self.bus.connections:
            try:
                await self.sync()
                self.failure = None
            except BrokerError as err:
                if not self.bus.connected:  # cut off meanwhile (a change to our own role does that): a reconnect syncs
                    log.info("the broker connection ended during a sync of accounts; syncing after the reconnect")
                    return
                log.error("could not sync the broker's accounts: %s", err.detail)
                self.failure = err.detail
                await asyncio.sleep(RETRY_SECONDS)

    async def ready(self, connection: int, timeout: float = 30.0) -> None:
        """Return once the accounts were synced during this bus connection (or later); BrokerError if they fail."""
        try:
            async with asyncio.timeout(timeout):
                while self._synced_for < connection:
                    if self.failure is not None:
                        raise BrokerError(self.failure)
                    await asyncio.sleep(0.02)
        except TimeoutError as err:
            raise BrokerError(f"the broker's accounts were not synced within {timeout:.0f} s") from err

    async def sync(self) -> SyncReport:
        """Make the broker's clients and roles match the keys; returns what was done."""
        async with self._lock:
            started = time.monotonic()
            connection = self.bus.connections
            records = await self.db.run(key_store.all_keys)
            sealed = {record.id: record.key_sealed for record in records}
            want = dynsec.desired(records, self.tenant)
            clients, roles = await self.request(
                [
                    {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
                    {"command": "listRoles", "verbose": True, "count": -1, "offset": 0},
                ]
            )
            for response in (clients, roles):
                if response.get("error"):
                    raise BrokerError(f"the broker refused {response.get('command')}: {response['error']}")
            client_list, role_list = clients["data"].get("clients", []), roles["data"].get("roles", [])
            have = dynsec.existing(client_list, role_list)
            plan = dynsec.plan(want, have, lambda key_id: self._password(sealed.get(key_id)))
            plan.commands[:0] = dynsec.admin_fixes(self.admin_username, client_list, role_list)
            errors = [
                f"{command['command']} {command.get('username') or command.get('rolename')}: {response['error']}"
                for command, response in zip(plan.commands, await self.request(plan.commands), strict=True)
                if response.get("error")
            ]
            errors += [
                f"no account for {name}: the key was made before broker accounts and its password is not kept; "
                "make a new key"
                for name in plan.unmakeable
            ]
            for error in errors:
                log.warning("broker accounts: %s", error)
            if plan.commands:
                log.info("broker accounts: %d changes for %d clients", len(plan.commands), len(want.clients))
            seconds = round(time.monotonic() - started, 3)
            self.report = SyncReport(datetime.now(UTC), seconds, len(want.clients), len(plan.commands), errors)
            self._synced_for = max(self._synced_for, connection)
            return self.report

    def _password(self, sealed: str | None) -> str | None:
        if sealed is None:
            return None
        try:
            return str(self.box.open(sealed))
        except OrchestratorError:
            return None
