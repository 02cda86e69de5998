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
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from worker_sdk.mqtt import MqttError

from ..bus import Bus
from ..db import Database
from ..db.models import ApiKey
from ..errors import BrokerError, OrchestratorError
from ..secretbox import SecretBox
from ..store import keys as key_store
from . import dynsec

log = logging.getLogger(__name__)
REQUEST_TIMEOUT_SECONDS = 10.0
RETRY_SECONDS = 2.0
RETRY_DELAY_MAX_SECONDS = 60.0
COMMANDS_PER_MESSAGE = 200  # the plugin saves its file once per message: batches, but not endless ones


@dataclass
class SyncReport:
    """What the last sync did, for /healthz."""

    at: datetime | None = None
    seconds: float = 0.0
    clients: int = 0
    changes: int = 0
    errors: list[str] = field(default_factory=list)  # commands the broker refused (retried)
    unmakeable: list[str] = field(default_factory=list)  # accounts that cannot be made (not retried)


class SyncInterrupted(BrokerError):
    """The broker connection ended during a sync (a change to our own role does that): the reconnect syncs."""


class BrokerAccounts:
    """Sends dynamic-security commands and keeps every key's client and role on the broker."""

    def __init__(self, db: Database, bus: Bus, box: SecretBox, admin_username: str, tenant: str | None) -> None:
        self.db = db
        self.bus = bus
        self.admin_username = admin_username
        self.box = box
        self.tenant = tenant
        self.report = SyncReport()
        self.failure: str | None = None  # why syncs fail while connected, until one succeeds
        self._failure_in = 0  # the bus connection that failure happened in
        self._prefix = secrets.token_hex(4) + "-"  # correlation data of this instance's commands
        self._numbers = itertools.count(1)
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._lock = asyncio.Lock()
        self._synced_for = 0  # the bus connection the last complete sync ran in
        self._wanted = asyncio.Event()  # a sync is due (a reconnect, or a change that did not reach the broker)
        self._syncer: asyncio.Task[None] | None = None
        bus.subscribe(dynsec.RESPONSE_TOPIC, self._on_response)
        bus.on_connect(self._on_connect)

    def start(self) -> None:
        """Keep syncing in the background whenever one is due, retrying with back-off until one succeeds."""
        self._syncer = asyncio.create_task(self._sync_when_wanted())

    async def stop(self) -> None:
        """Stop the background syncs."""
        if self._syncer is not None:
            self._syncer.cancel()
            await asyncio.gather(self._syncer, return_exceptions=True)

    def sync_soon(self) -> None:
        """Ask for a sync in the background (as soon as the broker is connected)."""
        self._wanted.set()

    async def _on_connect(self) -> None:
        # After every (re)connect: a broker that restarted may have lost accounts, or missed revocations.
        self.sync_soon()

    async def _sync_when_wanted(self) -> None:
        delay = RETRY_SECONDS
        while True:
            await self._wanted.wait()
            await self.bus.wait_connected()
            self._wanted.clear()
            try:
                report = await self.sync()
                retry = bool(report.errors)
                self.failure = None
            except SyncInterrupted as err:
                log.info("%s", err.detail)
                retry = False  # the reconnect asks again
            except OrchestratorError as err:  # the broker does not answer, or the database is away
                log.error("could not sync the broker's accounts: %s", err.detail)
                self.failure, self._failure_in = err.detail, self.bus.connections
                retry = True
            except Exception:  # a bug must not end the syncs for good
                log.exception("syncing the broker's accounts failed")
                retry = True
            if retry:
                self._wanted.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_DELAY_MAX_SECONDS)
            else:
                delay = RETRY_SECONDS

    async def ready(self, connection: int, timeout: float = 30.0) -> None:
        """Return once the accounts were synced during this bus connection (or later); BrokerError if they fail."""
        try:
            async with asyncio.timeout(timeout):
                while self._synced_for < connection:
                    if self.failure is not None and self._failure_in >= connection:
                        raise BrokerError(self.failure)
                    await asyncio.sleep(0.02)
        except TimeoutError as err:
            raise BrokerError(f"the broker's accounts were not synced within {timeout:.0f} s") from err

    async def request(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send commands and return the plugin's responses, in order; BrokerError if it does not answer."""
        responses: list[dict[str, Any]] = []
        for start in range(0, len(commands), COMMANDS_PER_MESSAGE):
            responses += await self._request_batch(commands[start : start + COMMANDS_PER_MESSAGE])
        return responses

    async def _request_batch(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        connection = self.bus.connections
        tagged = []
        futures = []
        for command in commands:
            correlation = f"{self._prefix}{next(self._numbers)}"
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._waiting[correlation] = future
            futures.append(future)
            tagged.append(command | {"correlationData": correlation})
        try:
            try:
                await self.bus.publish(dynsec.CONTROL_TOPIC, json.dumps({"commands": tagged}))
            except MqttError as err:
                raise SyncInterrupted(f"the broker connection ended while sending accounts: {err}") from err
            deadline = loop.time() + REQUEST_TIMEOUT_SECONDS
            while not all(future.done() for future in futures):
                if self.bus.connections != connection or not self.bus.connected:
                    raise SyncInterrupted("the broker connection ended before the broker answered about accounts")
                if loop.time() > deadline:
                    raise BrokerError(
                        f"the broker at {self.bus.url} did not answer on {dynsec.CONTROL_TOPIC} within "
                        f"{REQUEST_TIMEOUT_SECONDS:.0f} s: load Mosquitto's dynamic security plugin (docs/broker.md) "
                        "and give ORCH_BROKER__USERNAME its admin role"
                    )
                await asyncio.wait(futures, timeout=0.05)
            return [future.result() for future in futures]
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

    async def sync(self) -> SyncReport:
        """Make the broker's clients and roles match the keys; returns what was done."""
        async with self._lock:
            started = time.monotonic()
            connection = self.bus.connections
            records = await self.db.run(key_store.all_keys)
            want = dynsec.desired(records, self.tenant, reserved={self.admin_username})
            clients, roles = await self.request(
                [
                    {"command": "listClients", "verbose": True, "count": -1, "offset": 0},
                    {"command": "listRoles", "verbose": True, "count": -1, "offset": 0},
                ]
            )
            for response in (clients, roles):
                if response.get("error") or not isinstance(response.get("data"), dict):
                    raise BrokerError(f"the broker refused {response.get('command')}: {response.get('error')}")
            client_list, role_list = clients["data"].get("clients", []), roles["data"].get("roles", [])
            have = dynsec.existing(client_list, role_list)
            fixes = dynsec.admin_fixes(self.admin_username, client_list, role_list)
            await self._apply(want, have, records, fixes, started)
            self._synced_for = max(self._synced_for, connection)
            return self.report

    async def sync_keys(self, app_id: str, key_ids: Collection[str]) -> SyncReport:
        """Bring only these keys of one application (and its login names) in step: what a key change needs.

        A full sync lists every account on the broker; this asks for the few it touches, so making or revoking a
        key costs the same with ten keys or ten thousand. Reconnects still run the full sync.
        """
        async with self._lock:
            started = time.monotonic()
            records = await self.db.run(key_store.keys_for_accounts, app_id=app_id, key_ids=list(key_ids))
            full = dynsec.desired(records, self.tenant, reserved={self.admin_username})
            names = dynsec.affected_usernames(app_id, key_ids, self.tenant, reserved={self.admin_username})
            want = dynsec.Accounts(
                {name: role for name, role in full.roles.items() if name in key_ids},
                {name: client for name, client in full.clients.items() if name in names},
            )
            commands = [{"command": "getClient", "username": name} for name in names]
            commands += [{"command": "getRole", "rolename": key_id} for key_id in key_ids]
            found = await self.request(commands)
            for response in found:  # "not found" is an answer; anything else is not
                error = str(response.get("error") or "")
                if error and "not found" not in error.lower():
                    raise BrokerError(f"the broker refused {response.get('command')}: {error}")
            data = [response.get("data") or {} for response in found if not response.get("error")]
            have = dynsec.existing(
                [item["client"] for item in data if "client" in item], [item["role"] for item in data if "role" in item]
            )
            return await self._apply(want, have, records, [], started)

    async def _apply(
        self,
        want: dynsec.Accounts,
        have: dynsec.Accounts,
        records: list[ApiKey],
        fixes: list[dict[str, Any]],
        started: float,
    ) -> SyncReport:
        """Send the commands that turn `have` into `want`; record and return what was done."""
        sealed = {record.id: record.key_sealed for record in records}
        unopenable: list[str] = []
        plan = dynsec.plan(want, have, lambda key_id: self._password(key_id, sealed.get(key_id), unopenable))
        plan.commands[:0] = fixes
        errors = [
            f"{command['command']} {command.get('username') or command.get('rolename')}: {response.get('error')}"
            for command, response in zip(plan.commands, await self.request(plan.commands), strict=True)
            if response.get("error")
        ]
        unmakeable = [
            f"no account for {name}: "
            + (
                "its sealed key does not open with ORCH_SECRET_KEY"
                if want.clients[name].key_id in unopenable
                else "the key was made before broker accounts and is not kept; make a new key"
            )
            for name in plan.unmakeable
        ]
        for problem in errors + unmakeable:
            log.warning("broker accounts: %s", problem)
        if plan.commands:
            log.info("broker accounts: %d changes for %d clients", len(plan.commands), len(want.clients))
        seconds = round(time.monotonic() - started, 3)
        self.report = SyncReport(datetime.now(UTC), seconds, len(want.clients), len(plan.commands), errors, unmakeable)
        return self.report

    def _password(self, key_id: str, sealed: str | None, unopenable: list[str]) -> str | None:
        if sealed is None:
            return None
        try:
            return str(self.box.open(sealed))
        except OrchestratorError:
            unopenable.append(key_id)
            return None
