"""The hub's device registry over its REST API, authenticated with SAS tokens signed by the policy key."""

from __future__ import annotations

import json
import logging
import ssl
import time
from typing import Any
from urllib.parse import quote

import aiohttp
from azure.iot.device.common.auth.sastoken import RenewableSasToken
from azure.iot.device.common.auth.signing_mechanism import SymmetricKeySigningMechanism
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger(__name__)
PAGE_SIZE = 1000
BULK_SIZE = 100  # the hub's limit for one bulk registry request
RETRIES = 5


class HubError(Exception):
    """The hub answered with an error, or could not be reached; `retry_after` when throttled."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def signer(policy_key: str) -> SymmetricKeySigningMechanism:
    """Signs SAS tokens with the shared access policy key (azure-iot-device's own implementation)."""
    return SymmetricKeySigningMechanism(policy_key)


def sas_token(resource: str, policy_key: str, policy_name: str, ttl: int) -> RenewableSasToken:
    """A SAS token for a resource (`hub` for the registry, `hub/devices/id` for a device) and policy."""
    return RenewableSasToken(resource, signer(policy_key), key_name=policy_name, ttl=ttl)


class HubRegistry:
    """Devices and twins of one hub: create, read, tag, delete, and list the ones we manage."""

    def __init__(
        self,
        hostname: str,
        policy_name: str,
        policy_key: str,
        base_url: str,
        api_version: str,
        ssl_context: ssl.SSLContext,
        ttl: int,
    ) -> None:
        self.hostname = hostname
        self.base_url = base_url
        self.api_version = api_version
        self._token = sas_token(hostname, policy_key, policy_name, ttl)
        self._policy_name = policy_name
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=8), timeout=aiohttp.ClientTimeout(total=30)
        )

    async def close(self) -> None:
        """Close the HTTP client."""
        await self._session.close()

    def _authorization(self) -> str:
        if self._token.expiry_time - time.time() < 300:
            self._token.refresh()
        return str(self._token)

    async def _request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, dict[str, str]]:
        """One registry call; throttling (429), 5xx and connection errors are retried with back-off."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(_transient), wait=_wait, stop=stop_after_attempt(RETRIES), reraise=True
        )
        return await retrying(self._request_once, method, path, body, headers)

    async def _request_once(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None
    ) -> tuple[int, Any, dict[str, str]]:
        url = f"{self.base_url}{path}{'&' if '?' in path else '?'}api-version={self.api_version}"
        all_headers = {"Authorization": self._authorization(), **(headers or {})}
        try:
            async with self._session.request(method, url, json=body, headers=all_headers) as response:
                text = await response.text()
                status, response_headers = response.status, dict(response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            raise HubError(f"cannot reach the IoT Hub registry at {self.base_url}: {err!r}") from err
        data: Any = None
        if text:
            try:
                data = json.loads(text)
            except ValueError:
                data = text
        if status == 401:
            raise HubError(
                f"the hub refused the shared access policy {self._policy_name!r} (HTTP 401): check "
                "the policy name and key",
                status,
            )
        if status == 403:
            raise HubError(
                f"the policy {self._policy_name!r} may not do this (HTTP 403): it needs registry "
                f"read/write and device connect; {_message(data)}",
                status,
            )
        if status == 429:
            retry = response_headers.get("Retry-After")
            raise HubError(
                f"the hub is throttling requests (HTTP 429): {_message(data)}",
                status,
                float(retry) if retry and retry.isdigit() else 5.0,
            )
        if status >= 500:
            raise HubError(f"the hub answered HTTP {status}: {_message(data)}", status)
        return status, data, response_headers

    async def get_device(self, device_id: str) -> dict[str, Any] | None:
        """The device identity, or None."""
        status, data, _ = await self._request("GET", f"/devices/{quote(device_id, safe='')}")
        if status == 404:
            return None
        _check(status, data, f"reading device {device_id}")
        return data

    async def create_device(self, device_id: str) -> None:
        """Create a device identity with hub-generated keys (nothing happens if it exists)."""
        body = {
            "deviceId": device_id,
            "status": "enabled",
            "authentication": {"type": "sas", "symmetricKey": {"primaryKey": None, "secondaryKey": None}},
        }
        status, data, _ = await self._request("PUT", f"/devices/{quote(device_id, safe='')}", body)
        if status == 409:
            return
        _check(status, data, f"creating device {device_id}")

    async def delete_device(self, device_id: str) -> None:
        """Delete a device identity (already gone is fine)."""
        status, data, _ = await self._request(
            "DELETE", f"/devices/{quote(device_id, safe='')}", headers={"If-Match": "*"}
        )
        if status != 404:
            _check(status, data, f"deleting device {device_id}")

    async def set_tags(self, device_id: str, tags: dict[str, Any]) -> None:
        """Replace our tags on the device's twin."""
        status, data, _ = await self._request(
            "PATCH", f"/twins/{quote(device_id, safe='')}", {"tags": tags}, headers={"If-Match": "*"}
        )
        _check(status, data, f"tagging device {device_id}")

    async def bulk(self, operations: list[dict[str, Any]]) -> list[str]:
        """Bulk registry operations (`importMode` create, createOrUpdate, delete), 100 per request as the hub
        allows; returns the errors the hub reported for single devices."""
        errors: list[str] = []
        for start in range(0, len(operations), BULK_SIZE):
            status, data, _ = await self._request("POST", "/devices", operations[start : start + BULK_SIZE])
            _check(status, data, "bulk registry update")
            for error in (data or {}).get("errors") or []:
                errors.append(
                    f"{error.get('deviceId')}: {error.get('errorCode')} {error.get('errorStatus', '')}".strip()
                )
        return errors

    async def twins(self) -> list[dict[str, Any]]:
        """Every twin in the hub (paged), to find the devices this integration manages."""
        found: list[dict[str, Any]] = []
        continuation: str | None = None
        while True:
            headers = {"x-ms-max-item-count": str(PAGE_SIZE)}
            if continuation:
                headers["x-ms-continuation"] = continuation
            status, data, response_headers = await self._request(
                "POST", "/devices/query", {"query": "SELECT * FROM devices"}, headers
            )
            _check(status, data, "listing devices")
            found += data or []
            continuation = response_headers.get("x-ms-continuation") or response_headers.get("X-Ms-Continuation")
            if not continuation:
                return found


def _message(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("Message") or data.get("message") or data)[:300]
    return str(data)[:300]


def _check(status: int, data: Any, what: str) -> None:
    if status >= 400:
        raise HubError(f"{what} failed: HTTP {status}: {_message(data)}", status)


def _transient(error: BaseException) -> bool:
    return isinstance(error, HubError) and (error.status is None or error.status == 429 or error.status >= 500)


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    retry_after = getattr(error, "retry_after", None) or 0.0
    return float(max(wait_exponential_jitter(initial=0.5, max=20)(state), min(retry_after, 30.0)))
