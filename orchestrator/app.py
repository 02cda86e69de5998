"""Wiring: builds the parts (database, broker, handler, runtime, reconciler) and the FastAPI app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI

from .config import Settings
from .db import Database
from .handler import keys as key_rules
from .handler import registry
from .handler.broker import ADMIN_USER, BrokerUser, ManagedBroker
from .handler.core import Handler
from .handler.hub import EventHub
from .integrations import service
from .integrations.recorder import IntegrationRecorder
from .integrations.secrets import SecretBox
from .reconciler import Reconciler
from .runtime import Runtime, make_runtime
from .templates import TemplateRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedKey:
    """What the API needs to authenticate a key without touching the database."""

    key_id: str
    secret_hash: str
    application_id: str
    scopes: frozenset[str]
    integration_id: str | None


@dataclass
class Orchestrator:
    """Every long-lived part of a running orchestrator."""

    settings: Settings
    db: Database
    templates: TemplateRegistry
    box: SecretBox
    hub: EventHub
    handler: Handler
    runtime: Runtime
    recorder: IntegrationRecorder
    reconciler: Reconciler
    admin_token: str
    broker: ManagedBroker | None
    keys: dict[str, CachedKey] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> Orchestrator:
        """Create the parts (nothing is started yet)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        templates = TemplateRegistry(settings.templates_dir).load()
        box = SecretBox(settings.persistent_secret("secret.key", settings.secret_key, factory="fernet"))
        admin_token = settings.persistent_secret("admin.token", settings.admin_token)
        hub = EventHub(settings.handler.event_buffer_size)
        broker_password = settings.persistent_secret("broker.password", None)
        broker = None
        if settings.broker.mode == "managed":
            broker = ManagedBroker(
                settings.data_dir / "mosquitto",
                settings.broker.url,
                settings.broker.mosquitto_binary,
                settings.broker.max_queued_messages,
            )
        handler = Handler(settings, db, hub, broker_password)
        runtime = make_runtime(settings, allowed_images=templates.images)
        reconciler_box: list[Reconciler] = []
        recorder = IntegrationRecorder(handler, lambda: reconciler_box[0].wake() if reconciler_box else None)
        handler.listener = recorder
        reconciler = Reconciler(
            settings=settings, handler=handler, runtime=runtime, templates=templates, box=box, recorder=recorder
        )
        reconciler_box.append(reconciler)
        return cls(settings, db, templates, box, hub, handler, runtime, recorder, reconciler, admin_token, broker)

    async def start(self) -> None:
        """Migrate, start the broker, connect the handler, adopt what runs, start reconciling."""
        self.db.migrate()
        if len(self.box.keys) > 1:
            count = await self.handler.run_db(service.reseal_secrets, self.box)
            log.info("secrets of %d integrations sealed with the first ORCH_SECRET_KEY; the others can go", count)
        await self.refresh_keys()
        if self.broker is not None:
            if not self.settings.broker.worker_url:
                self.broker.extra_hosts = self.runtime.extra_listen_addresses()
            await self.broker.start()
            self.broker.supervise()
        await self.handler.start()
        self.reconciler.start()
        log.info(
            "orchestrator ready: API on %s, runtime %s, broker %s (%s)",
            self.settings.api_url,
            self.runtime.name,
            self.settings.broker.url,
            self.settings.broker.mode,
        )

    async def stop(self) -> None:
        """Stop reconciling, then the runtime's own workers, the handler and the broker."""
        await self.reconciler.stop()
        await self.runtime.close()
        await self.handler.stop()
        if self.broker is not None:
            await self.broker.stop()
        self.db.engine.dispose()

    async def refresh_keys(self) -> None:
        """Reload keys into the API cache and into the broker's password and ACL files."""
        records = await self.handler.run_db(registry.all_keys)
        self.keys = {
            record.id: CachedKey(
                record.id,
                record.secret_hash,
                record.application_id,
                frozenset(key_rules.expand(record.scopes)),
                record.integration_id,
            )
            for record in records
        }
        if self.broker is not None:
            admin_hash = key_rules.mosquitto_hash(self.handler.mqtt_password)
            users = [BrokerUser(ADMIN_USER, admin_hash, ["topic readwrite #"])]
            users += [
                BrokerUser(
                    record.id,
                    record.mqtt_password_hash,
                    key_rules.mqtt_acl(record.application_id, record.scopes, record.integration_id),
                )
                for record in records
            ]
            self.broker.write_users(users)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application: API under /api/v1, console at /, OpenAPI docs at /docs."""
    from .api import install

    settings = settings or Settings()
    orchestrator = Orchestrator.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await orchestrator.start()
        try:
            yield
        finally:
            await orchestrator.stop()

    app = FastAPI(
        title="IoT integration orchestrator",
        version="0.1.0",
        description="Runs one worker per integration from generic per-platform images, and the handler "
        "(devices, uplinks, downlinks, events) they talk to.",
        lifespan=lifespan,
    )
    app.state.orchestrator = orchestrator
    install(app)
    return app
