"""The webhook worker: each event becomes a templated HTTP request; the response can become a downlink."""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from worker_sdk import ConfigurationError, Event, PermanentError, RetryableError, Worker
from worker_sdk.messages import InvalidDownlink, validate_downlinks
from worker_sdk.outbound import OutboundPolicy
from worker_sdk.redact import Redactor

from .check import prepare, renamed_settings
from .config import WebhookSettings
from .render import Template, build_context
from .request import InvalidRequest, OutgoingRequest, response_downlinks

EXCERPT_CHARS = 300
MAX_RESPONSE_BYTES = 64 * 1024
RETRYABLE_STATUS = {408, 425, 429}
log = logging.getLogger(__name__)
PART_BYTES = 512  # Particle's part size for answers to the device
MAX_PARTS = 16  # downlinks the handler takes in one push


def excerpt(data: bytes | str | None) -> str:
    """The start of a body, for events and logs."""
    if data is None:
        return ""
    text = data[: EXCERPT_CHARS + 1].decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "..."


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


class OutboundRefused(OSError):
    """Every address a name resolves to is closed by the outbound policy."""


class PolicyResolver(aiohttp.abc.AbstractResolver):
    """Resolves names as usual, then keeps only the addresses the outbound policy allows: the connection goes
    to an address that was checked, so a name that resolves elsewhere later cannot slip through."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self.resolver = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        found = await self.resolver.resolve(host, port, family)
        allowed = [item for item in found if self.policy.refuses_address(item["host"]) is None]
        if not allowed:
            rule = self.policy.refuses_address(found[0]["host"]) if found else "no address"
            raise OutboundRefused(f"the outbound policy closes {host} ({found[0]['host'] if found else '?'}): {rule}")
        return allowed

    async def close(self) -> None:
        await self.resolver.close()


class WebhookWorker(Worker):
    """Sends events to an HTTP endpoint with retries; the response template can answer with a downlink."""

    settings_class = WebhookSettings
    settings: WebhookSettings

    def configure(self) -> None:
        """Compile every template once, naming the setting of each one that does not parse."""
        self.events = self.settings.event_names
        renamed = renamed_settings(os.environ)
        if renamed:
            raise ConfigurationError([f"{name}: {why}" for name, why in renamed])
        self.policy = OutboundPolicy.from_environment(os.environ)
        prepared = prepare(self.settings, self.policy)  # what the orchestrator checked before it accepted it
        self.builder = prepared.builder
        if self.handler.downlink_api_key and self.handler.downlink_url:
            self.builder.downlink = (self.handler.downlink_api_key.get_secret_value(), self.handler.downlink_url)
        self.response_template = prepared.response_template
        self.response_topic, self.error_topic = prepared.response_topic, prepared.error_topic
        answers = bool(self.settings.response_template) or self.response_topic or self.error_topic
        self.needs_context = self.builder.needs_context or bool(answers)
        self.ssl_context = prepared.ssl_context

    async def setup(self) -> None:
        """Open the HTTP client: TLS verification on unless turned off, one connection pool."""
        self.client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.worker.concurrency, ssl=self.ssl_context, resolver=PolicyResolver(self.policy)
            ),
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
        )

    async def teardown(self) -> None:
        """Close the HTTP client."""
        client = getattr(self, "client", None)
        if client is not None:
            await client.close()

    async def handle(self, event: Event) -> dict[str, Any] | None:
        """Deliver one event; 5xx, 429 and connection errors are retried, other 4xx are not."""
        # Building template variables costs more than forwarding the message: skip it when unused.
        context = build_context(event, self.integration_id) if self.needs_context else {}
        raw = event.raw or json.dumps(event.payload, separators=(",", ":")).encode()
        try:
            request = self.builder.build(event, context, raw)
        except InvalidRequest as err:
            raise PermanentError(str(err)) from err
        status, body, duration_ms, retry_after = await self._send(request)
        url = request.url
        if request.secrets:  # rendered secrets (in the query, or echoed by the target) stay out of reports
            masking = Redactor(request.secrets)
            body, url = masking.text(body), masking.text(url)
        details = {
            "request": {"method": request.method, "url": url, "body": excerpt(request.body)},
            "response": {"status": status, "body": excerpt(body)},
            "duration_ms": duration_ms,
        }
        if status >= 400:
            message = f"{request.method} {url} answered HTTP {status}: {excerpt(body)[:120]}"
            if status >= 500 or status in RETRYABLE_STATUS:
                raise RetryableError(message, retry_after=retry_after, **details)
            raise PermanentError(message, **details)
        if self.response_topic is not None or self.settings.response_template:
            body = self.redactor.text(body)  # the worker's own secrets too: a device is no place for them
        if self.response_topic is not None:
            await self._answer_on_topic(self.response_topic, event, context, status, body)
        elif self.settings.response_template:
            await self._answer_with_downlinks(event, context, status, body)
        return details

    async def failed(self, event: Event, reason: str, details: dict[str, Any]) -> None:
        """Particle's error response topic: the device hears of a failure, the status and the start of the answer;
        without an answer only that there was none (the reason names URLs and rules, which are not the device's)."""
        if self.error_topic is None:
            return
        response = details.get("response") or {}
        status = response.get("status")
        text = f"HTTP {status}: {response.get('body', '')}" if status else "not delivered: no answer from the endpoint"
        context = build_context(event, self.integration_id)
        data = text.encode()[:PART_BYTES].decode("utf-8", "ignore").encode()  # whole characters only
        await self._send_parts(event, self.error_topic.render(context), data)

    async def _answer_on_topic(
        self, topic: Template, event: Event, context: dict[str, Any], status: int, body: str
    ) -> None:
        """Particle's response topic: the answer (rendered by the response template, if any) in 512-byte parts."""
        # As on Particle, the keys of a JSON answer are variables of the response template ({{temp}}).
        variables = _with_response(context, status, body)
        if isinstance(variables["response"]["json"], dict):
            variables = {**variables, **variables["response"]["json"], "response": variables["response"]}
        answer = self.response_template.render(variables) if self.settings.response_template else body
        data = answer.encode()
        if not data:
            return
        parts = -(-len(data) // PART_BYTES)
        too_long = parts > MAX_PARTS or (parts > 1 and self.settings.response_too_long == "refuse")
        if too_long:
            limit = PART_BYTES * (MAX_PARTS if self.settings.response_too_long == "split" else 1)
            message = (
                f"the answer for the device is {len(data)} bytes; at most {limit} go back "
                f"(WEBHOOK_RESPONSE_TOO_LONG={self.settings.response_too_long})"
            )
            # Not on the error topic: the message was delivered, and firmware may take hook-error for "send again".
            await self.report("error", message, device_id=event.device_id)  # not the message's: it was delivered
            return
        await self._send_parts(event, topic.render(context), data)

    async def _send_parts(self, event: Event, topic: str, data: bytes) -> None:
        """Named downlinks TOPIC/0, TOPIC/1, ... of at most 512 bytes each, delivered at once by the handler."""
        if not topic or topic.startswith("/") or topic.endswith("/") or "//" in topic:
            await self.report(
                "error", f"no answer for the device: the topic rendered as {topic!r}", device_id=event.device_id
            )
            return
        items = [
            {
                "name": f"{topic}/{index}",
                "f_port": self.settings.downlink_f_port,
                "frm_payload": base64.b64encode(data[start : start + PART_BYTES]).decode(),
                "correlation_ids": event.correlation_ids,
            }
            for index, start in enumerate(range(0, len(data), PART_BYTES))
        ]
        try:
            downlinks = validate_downlinks(items)
        except InvalidDownlink as err:
            await self.report("error", f"no answer for the device on {topic!r}: {err}", device_id=event.device_id)
            return
        if _is_sample(event):  # the device published nothing: it gets nothing
            log.info("not sent to %s for a TEST sample: %s", event.device_id, [item["name"] for item in downlinks])
            return
        await self.push_downlinks(event.device_id, downlinks)

    async def _send(self, request: OutgoingRequest) -> tuple[int, str, int, float | None]:
        """Send the request: status, body (first 64 KiB), duration in ms, and Retry-After seconds."""
        started = time.monotonic()
        # What errors say of the URL: without the secrets rendered into its query.
        masking = Redactor(request.secrets) if request.secrets else None
        shown = masking.text(request.url) if masking else request.url

        def why(err: Exception) -> str:  # aiohttp's texts may hold the whole URL
            return masking.text(str(err)) if masking else str(err)

        # Following a 301/302/303 turns a POST into a GET without its body: the message would be reported
        # delivered although it never arrived. Only GET requests follow redirects.
        follow = request.method == "GET"
        try:
            async with self.client.request(
                request.method, request.url, headers=request.headers, data=request.body, allow_redirects=follow
            ) as response:
                data = await response.content.read(MAX_RESPONSE_BYTES)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                status = response.status
                location = response.headers.get("Location", "")
        except aiohttp.InvalidURL as err:
            raise PermanentError(f"invalid request URL {shown!r}: {why(err)}") from err
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, OutboundRefused):  # every address the name resolves to is closed
                raise PermanentError(f"{request.method} {shown} not sent: {why(err.os_error)}") from err
            raise RetryableError(
                f"{request.method} {shown} failed: {why(err)}", request={"method": request.method, "url": shown}
            ) from err
        # Before ValueError: certificate errors are ValueErrors too, and may pass (a renewed certificate).
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            kind = "timed out" if isinstance(err, TimeoutError) else f"failed: {why(err)}"
            raise RetryableError(
                f"{request.method} {shown} {kind}", request={"method": request.method, "url": shown}
            ) from err
        except ValueError as err:
            raise PermanentError(f"invalid request URL {shown!r}: {why(err)}") from err
        duration_ms = int((time.monotonic() - started) * 1000)
        if 300 <= status < 400:
            raise PermanentError(
                f"{request.method} {shown} answered HTTP {status}, a redirect to {location or 'nowhere'}; "
                "not followed, as the request would lose its body: set the integration's URL to the new address",
                request={"method": request.method, "url": shown},
                response={"status": status, "location": location},
            )
        return status, data.decode("utf-8", "replace"), duration_ms, retry_after

    async def _answer_with_downlinks(self, event: Event, context: dict[str, Any], status: int, body: str) -> None:
        rendered = self.response_template.render(_with_response(context, status, body))
        downlinks, problems = response_downlinks(
            rendered, self.settings.downlink_f_port, self.settings.downlink_confirmed
        )
        if problems:
            await self.report(
                "error",
                "the response template produced an invalid downlink: " + "; ".join(problems),
                device_id=event.device_id,
                rendered=excerpt(rendered),
            )
        if downlinks and not _is_sample(event):  # a TEST sample's answer is not for the device
            for downlink in downlinks:
                downlink["correlation_ids"] = [*downlink.get("correlation_ids", []), *event.correlation_ids]
            await self.push_downlinks(event.device_id, downlinks)


def _with_response(context: dict[str, Any], status: int, body: str) -> dict[str, Any]:
    """The variables of a response template: the event's, and `response` (status, body, and json if it is)."""
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None
    return {**context, "response": {"status": status, "body": body, "json": parsed}}


def _is_sample(event: Event) -> bool:
    """A message the TEST button sent, not the device."""
    return any(correlation.startswith("test:") for correlation in event.correlation_ids)
