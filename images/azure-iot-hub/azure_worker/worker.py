"""The Azure IoT Hub worker: registry sync, telemetry as each device, downlinks from C2D messages and twins."""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any

from azure.iot.device import Message
from azure.iot.device.aio import IoTHubDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError, OperationCancelled, OperationTimeout

from worker_sdk import ConfigurationError, Device, Event, RetryableError, SetupError, Worker

from .config import AzureSettings
from .mapping import (
    InvalidDownlink,
    c2d_downlinks,
    desired_downlinks,
    device_tags,
    handler_device_id,
    hub_device_id,
    managed_by,
    telemetry_properties,
)
from .pool import ConnectionPool
from .registry import HubError, HubRegistry, sas_token

log = logging.getLogger(__name__)
SEND_TIMEOUT_SECONDS = 30.0
REAP_INTERVAL_SECONDS = 10.0


class AzureWorker(Worker):
    """Mirrors the device registry into the hub, sends uplinks as each device, turns C2D and twins into downlinks."""

    settings_class = AzureSettings
    settings: AzureSettings
    confirm_downlinks = True

    def configure(self) -> None:
        """Read the CA file (when given) and build the TLS context for the registry."""
        self.ca_pem: str | None = self.settings.ca_pem.strip() or None
        if self.settings.ca_file:
            try:
                self.ca_pem = Path(self.settings.ca_file).read_text()
            except OSError as err:
                raise ConfigurationError(
                    [f"AZURE_CA_FILE: cannot read {self.settings.ca_file}: {err.strerror}"]
                ) from err
        self.ssl_context = (
            ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()
        )
        self.key = self.settings.policy_key.get_secret_value()
        self.prefix = self.settings.device_id_prefix
        self.hub: HubRegistry | None = None
        self.pool = ConnectionPool(
            self._open,
            self._close,
            self.settings.max_connections,
            self.settings.idle_seconds,
            max_age=self.settings.token_ttl_seconds * 0.9,
        )
        self.tasks: list[asyncio.Task[None]] = []

    # -- set-up and registry sync ----------------------------------------------------------------

    async def setup(self) -> None:
        """Check the hub with a full registry sync; a bad key or unknown hub is a SetupError that says so."""
        if self.hub is None:
            self.hub = HubRegistry(
                self.settings.hub_hostname,
                self.settings.policy_name,
                self.key,
                self.settings.registry_base,
                self.settings.api_version,
                self.ssl_context,
                self.settings.token_ttl_seconds,
            )
        try:
            await self.resync()
        except HubError as err:
            raise SetupError(str(err)) from err
        self.tasks = [asyncio.create_task(self._resync_loop()), asyncio.create_task(self._reap_loop())]

    async def teardown(self) -> None:
        """Stop background work, close device connections and the registry client."""
        for task in self.tasks:
            task.cancel()
        await self.pool.close_all()
        if self.hub is not None:
            await self.hub.close()

    async def resync(self) -> dict[str, int]:
        """Make the hub's devices match the handler's in bulk: create or tag, and delete what we manage."""
        assert self.hub is not None
        twins = {twin["deviceId"]: twin for twin in await self.hub.twins()}
        wanted = {hub_device_id(self.prefix, device.device_id): device for device in self.registry.devices.values()}
        operations: list[dict[str, Any]] = []
        counts = {"created": 0, "updated": 0, "deleted": 0}
        for hub_id, device in wanted.items():
            tags = device_tags(self.app_id, self.integration_id, device)
            twin = twins.get(hub_id)
            if twin is not None and twin.get("tags") == tags:
                continue
            counts["updated" if twin else "created"] += 1
            operations.append(
                {
                    "id": hub_id,
                    "importMode": "createOrUpdate",
                    "status": "enabled",
                    "authentication": {"type": "sas"},
                    "tags": tags,
                }
            )
        if self.settings.delete_devices:
            for hub_id, twin in twins.items():
                if hub_id not in wanted and managed_by(twin, self.app_id, self.integration_id):
                    counts["deleted"] += 1
                    operations.append({"id": hub_id, "importMode": "delete", "eTag": "*"})
        errors = await self.hub.bulk(operations) if operations else []
        if errors:
            await self.report("error", f"the hub refused {len(errors)} device changes: " + "; ".join(errors[:5]))
        log.info("hub registry in sync: %s (%d devices)", counts, len(wanted))
        return counts

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_interval_seconds)
            try:
                await self.resync()
            except HubError as err:
                await self.report("error", f"registry resync failed: {err}")

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_SECONDS)
            closed = await self.pool.close_idle()
            if closed:
                log.debug("closed %d idle device connections (%d open)", closed, len(self.pool))

    async def on_device_event(self, name: str, device: Device) -> None:
        """Incremental sync of one registry change."""
        assert self.hub is not None
        hub_id = hub_device_id(self.prefix, device.device_id)
        if name == "device.delete":
            await self.pool.drop(hub_id)
            if self.settings.delete_devices:
                await self.hub.delete_device(hub_id)
            return
        if name == "device.create":
            await self.hub.create_device(hub_id)
        await self.hub.set_tags(hub_id, device_tags(self.app_id, self.integration_id, device))

    # -- device connections ----------------------------------------------------------------------

    async def _open(self, hub_id: str) -> IoTHubDeviceClient:
        loop = asyncio.get_running_loop()
        token = sas_token(
            f"{self.settings.hub_hostname}/devices/{hub_id}",
            self.key,
            self.settings.policy_name,
            self.settings.token_ttl_seconds,
        )
        # azure-iot-device annotates its keyword arguments as dicts; they are not.
        options: dict[str, Any] = {"server_verification_cert": self.ca_pem, "keep_alive": 120}
        client = IoTHubDeviceClient.create_from_sastoken(str(token), **options)

        # The SDK calls handlers on its own threads: hand the work back to our event loop.
        def on_c2d(message: Message) -> None:
            asyncio.run_coroutine_threadsafe(self._c2d(hub_id, message), loop)

        def on_desired(patch: dict[str, Any]) -> None:
            asyncio.run_coroutine_threadsafe(self._desired(hub_id, client, patch), loop)

        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await client.connect()
                # Setting a handler makes the SDK subscribe, blocking the caller until the broker answers:
                # do it on a worker thread so our event loop keeps moving other devices' messages.
                await asyncio.to_thread(setattr, client, "on_message_received", on_c2d)
                await asyncio.to_thread(setattr, client, "on_twin_desired_properties_patch_received", on_desired)
        except (ClientError, CredentialError, OperationTimeout, OperationCancelled, TimeoutError) as err:
            await self._close(client)
            raise RetryableError(f"cannot connect device {hub_id} to {self.settings.hub_hostname}: {err!r}") from err
        return client

    @staticmethod
    async def _close(client: IoTHubDeviceClient) -> None:
        try:
            await client.shutdown()
        except Exception as err:  # closing a broken connection may fail; it is gone either way
            log.debug("closing a device client: %r", err)

    # -- uplinks to the hub ----------------------------------------------------------------------

    async def handle(self, event: Event) -> dict[str, Any] | None:
        """Send the uplink as the device's telemetry (and its decoded payload as reported properties)."""
        hub_id = hub_device_id(self.prefix, event.device_id)
        client = await self.pool.get(hub_id)
        message = Message(event.raw, content_encoding="utf-8", content_type="application/json")
        message.custom_properties = telemetry_properties(event)
        decoded = (event.payload.get("uplink_message") or {}).get("decoded_payload")
        try:
            async with asyncio.timeout(SEND_TIMEOUT_SECONDS):
                await client.send_message(message)
                if self.settings.report_decoded_payload and isinstance(decoded, dict):
                    await client.patch_twin_reported_properties({"decodedPayload": decoded})
        except (ClientError, OperationTimeout, OperationCancelled, TimeoutError) as err:
            await self.pool.drop(hub_id)
            raise RetryableError(
                f"sending telemetry of {hub_id} to {self.settings.hub_hostname} failed: {err!r}",
                device_id=event.device_id,
            ) from err
        return {"hub_device_id": hub_id, "hub": self.settings.hub_hostname, "connections": len(self.pool)}

    # -- downlinks from the hub ------------------------------------------------------------------

    async def _c2d(self, hub_id: str, message: Message) -> None:
        device_id = handler_device_id(self.prefix, hub_id)
        if device_id is None:
            return
        try:
            downlinks = c2d_downlinks(
                message.data or b"", dict(message.custom_properties or {}), self.settings.downlink_f_port
            )
        except InvalidDownlink as err:
            await self.report("error", f"invalid cloud-to-device message for {hub_id}: {err}", device_id=device_id)
            return
        await self._push(device_id, downlinks, "cloud-to-device message")

    async def _desired(self, hub_id: str, client: IoTHubDeviceClient, patch: dict[str, Any]) -> None:
        device_id = handler_device_id(self.prefix, hub_id)
        if device_id is None:
            return
        try:
            downlinks = desired_downlinks(patch, self.settings.downlink_f_port)
        except InvalidDownlink as err:
            await self.report("error", f"invalid desired properties for {hub_id}: {err}", device_id=device_id)
            return
        if downlinks:
            await self._push(device_id, downlinks, "desired properties")
            try:
                await client.patch_twin_reported_properties({"lastDesiredVersion": patch.get("$version")})
            except ClientError as err:
                log.warning("could not acknowledge desired properties of %s: %r", hub_id, err)

    async def _push(self, device_id: str, downlinks: list[dict[str, Any]], source: str) -> None:
        verdict = await self.push_downlinks_confirmed(device_id, downlinks)
        if verdict is not None:
            await self.report(
                "error",
                f"the handler refused the downlink from {source} for {device_id}: {verdict}",
                device_id=device_id,
            )
        else:
            log.info("downlink from %s queued for %s", source, device_id)
