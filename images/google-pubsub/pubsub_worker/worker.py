"""The Pub/Sub worker: events to a topic (with attributes), downlinks from a subscription."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from google.api_core.exceptions import (
    GoogleAPICallError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RetryError,
)
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import pubsub_v1
from google.oauth2 import service_account

from worker_sdk import Event, PermanentError, RetryableError, SetupError, Worker

from .config import PubSubSettings
from .messages import InvalidDownlink, attributes_for, parse_downlink

log = logging.getLogger(__name__)


def full_path(kind: str, project: str, name: str) -> str:
    """`projects/<p>/<kind>/<name>`, unless `name` is a full path already."""
    return name if name.startswith("projects/") else f"projects/{project}/{kind}/{name}"


class PubSubWorker(Worker):
    """Publishes events to a topic and turns messages of a subscription into downlinks."""

    settings_class = PubSubSettings
    settings: PubSubSettings
    confirm_downlinks = True

    def configure(self) -> None:
        """Pick the events; point the client library at an emulator when one is configured."""
        self.events = self.settings.event_names
        if self.settings.emulator_host:
            os.environ["PUBSUB_EMULATOR_HOST"] = self.settings.emulator_host
        project = self.settings.project_id
        self.topic_path = full_path("topics", project, self.settings.topic)
        self.subscription_path = (
            full_path("subscriptions", project, self.settings.subscription) if self.settings.subscription else ""
        )
        downlink_topic = self.settings.downlink_topic or f"{self.settings.topic.rsplit('/', 1)[-1]}-downlinks"
        self.downlink_topic_path = full_path("topics", project, downlink_topic)
        self.dead_letter_path = (
            full_path("topics", project, self.settings.dead_letter_topic) if self.settings.dead_letter_topic else ""
        )
        self.publisher: Any = None
        self.subscriber: Any = None
        self.pull: Any = None

    # -- set-up ----------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Open the clients and check (or create) topics and subscription; SetupError says what is wrong."""
        self.loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        if self.subscriber is not None:
            flow = pubsub_v1.types.FlowControl(max_messages=self.settings.subscriber_max_messages)
            self.pull = self.subscriber.subscribe(self.subscription_path, self._on_pubsub_message, flow_control=flow)
            log.info("pulling downlinks from %s", self.subscription_path)

    def _credentials(self) -> Any:
        if self.settings.emulator_host:
            return AnonymousCredentials()
        text = self.settings.credentials_json.get_secret_value()
        if text:
            return service_account.Credentials.from_service_account_info(json.loads(text))
        return None  # application default credentials, e.g. workload identity

    def _open(self) -> None:
        settings = self.settings
        try:
            credentials = self._credentials()
            self.publisher = pubsub_v1.PublisherClient(
                credentials=credentials,
                batch_settings=pubsub_v1.types.BatchSettings(
                    max_messages=settings.batch_max_messages,
                    max_bytes=settings.batch_max_bytes,
                    max_latency=settings.batch_max_latency_seconds,
                ),
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=settings.ordering_by_device),
            )
            if self.subscription_path:
                self.subscriber = pubsub_v1.SubscriberClient(credentials=credentials)
        except (DefaultCredentialsError, ValueError) as err:
            raise SetupError(f"no usable Google credentials ({err}); fill in the service account key") from err
        self._ensure_topic(self.topic_path)
        if self.dead_letter_path:
            self._ensure_topic(self.dead_letter_path)
        if self.subscription_path:
            self._ensure_subscription()

    def _ensure_topic(self, path: str) -> None:
        try:
            self.publisher.get_topic(request={"topic": path}, timeout=15)
        except NotFound as err:
            if not self.settings.create_if_missing:
                raise SetupError(f"topic {path} does not exist; create it, or turn on create_if_missing") from err
            log.info("creating topic %s", path)
            self._api(lambda: self.publisher.create_topic(request={"name": path}, timeout=15), f"topic {path}")
        except PermissionDenied as err:
            raise SetupError(f"the credentials may not use topic {path}: {err.message}") from err
        except (GoogleAPICallError, RetryError) as err:
            raise SetupError(f"cannot reach Pub/Sub for topic {path}: {err}") from err

    def _ensure_subscription(self) -> None:
        try:
            self.subscriber.get_subscription(request={"subscription": self.subscription_path}, timeout=15)
        except NotFound as err:
            if not self.settings.create_if_missing:
                raise SetupError(
                    f"subscription {self.subscription_path} does not exist; create it, or turn on create_if_missing"
                ) from err
            self._ensure_topic(self.downlink_topic_path)
            log.info("creating subscription %s on %s", self.subscription_path, self.downlink_topic_path)
            request = {"name": self.subscription_path, "topic": self.downlink_topic_path, "ack_deadline_seconds": 60}
            self._api(
                lambda: self.subscriber.create_subscription(request=request, timeout=15),
                f"subscription {self.subscription_path}",
            )
        except PermissionDenied as err:
            raise SetupError(
                f"the credentials may not use subscription {self.subscription_path}: {err.message}"
            ) from err
        except (GoogleAPICallError, RetryError) as err:
            raise SetupError(f"cannot reach Pub/Sub for subscription {self.subscription_path}: {err}") from err

    @staticmethod
    def _api(call: Any, what: str) -> None:
        try:
            call()
        except PermissionDenied as err:
            raise SetupError(f"the credentials may not create {what}: {err.message}") from err
        except (GoogleAPICallError, RetryError) as err:
            raise SetupError(f"cannot create {what}: {err}") from err

    async def teardown(self) -> None:
        """Stop pulling, flush what is batched, close the clients."""

        def close() -> None:
            if self.pull is not None:
                self.pull.cancel()
            if self.subscriber is not None:
                self.subscriber.close()
            if self.publisher is not None:
                self.publisher.stop()

        await asyncio.to_thread(close)

    # -- events to Pub/Sub -----------------------------------------------------------------------

    async def handle(self, event: Event) -> dict[str, Any] | None:
        """Publish the event as is, with attributes; acknowledged once Pub/Sub confirmed it."""
        ordering = {"ordering_key": event.device_id} if self.settings.ordering_by_device else {}
        try:
            future = self.publisher.publish(
                self.topic_path, event.raw, **attributes_for(event, self.integration_id), **ordering
            )
            message_id = await asyncio.wrap_future(future)
        except (ValueError, TypeError, InvalidArgument) as err:
            raise PermanentError(f"Pub/Sub refused the {event.name} message: {err}") from err
        except NotFound as err:
            self._resume(ordering)
            raise RetryableError(f"topic {self.topic_path} no longer exists") from err
        except PermissionDenied as err:
            self._resume(ordering)
            raise RetryableError(f"the credentials may not publish to {self.topic_path}: {err.message}") from err
        except (GoogleAPICallError, RetryError, RuntimeError) as err:
            self._resume(ordering)
            raise RetryableError(f"publishing to {self.topic_path} failed: {err}") from err
        return {"message_id": message_id, "topic": self.topic_path}

    def _resume(self, ordering: dict[str, str]) -> None:
        # A failed publish pauses its ordering key until resumed.
        if ordering:
            self.publisher.resume_publish(self.topic_path, ordering["ordering_key"])

    # -- downlinks from Pub/Sub ------------------------------------------------------------------

    def _on_pubsub_message(self, message: Any) -> None:
        # Called on the subscriber's threads: hand over to the event loop; ack or nack happens there.
        asyncio.run_coroutine_threadsafe(self._downlink(message), self.loop)

    async def _downlink(self, message: Any) -> None:
        try:
            device_id, downlinks = parse_downlink(message.data, dict(message.attributes))
        except InvalidDownlink as err:
            await self._reject(message, str(err), None)
            return
        try:
            verdict = await self.push_downlinks_confirmed(device_id, downlinks)
        except RetryableError as err:
            log.warning("downlink message %s will be redelivered: %s", message.message_id, err.message)
            message.nack()
            return
        if verdict is not None:
            await self._reject(message, f"the handler refused it: {verdict}", device_id)
            return
        message.ack()
        log.debug("downlink message %s queued for %s", message.message_id, device_id)

    async def _reject(self, message: Any, reason: str, device_id: str | None) -> None:
        """Report an invalid downlink message, move it to the dead-letter topic if any, and ack it."""
        await self.report(
            "error",
            f"invalid downlink message {message.message_id}: {reason}",
            message_id=message.message_id,
            device_id=device_id,
            data=message.data[:300].decode("utf-8", "replace"),
        )
        if self.dead_letter_path:
            attributes = {
                **dict(message.attributes),
                "error": reason[:1000],
                "source_subscription": self.subscription_path,
            }
            try:
                await asyncio.wrap_future(self.publisher.publish(self.dead_letter_path, message.data, **attributes))
            except (GoogleAPICallError, RetryError, ValueError) as err:
                log.warning("cannot dead-letter message %s (%s); it will be redelivered", message.message_id, err)
                message.nack()
                return
        message.ack()
