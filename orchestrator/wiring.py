"""Wiring: builds every part of a running orchestrator, in dependency order, and starts and stops them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .broker.accounts import BrokerAccounts
from .broker.managed import ManagedBroker
from .broker.sessions import WorkerSessions
from .broker.watch import BrokerWatch
from .bus import CLIENT_ID, Bus, instance_client_id
from .cluster import Cluster, Identity, secret_fingerprint, templates_fingerprint
from .config import Settings
from .db import Database
from .events.log import EventLog
from .events.outbox import CHECKPOINT_TOPIC, Outbox
from .events.tail import LogTail
from .handler.core import Handler
from .integrations.recorder import IntegrationRecorder
from .reconciler import Reconciler
from .runtime import Runtime, make_runtime
from .secretbox import SecretBox
from .services import Services
from .services.applications import ApplicationService
from .services.dead_letters import DeadLetterService
from .services.devices import DeviceService
from .services.events import EventService
from .services.health import HealthService
from .services.integrations import IntegrationService
from .services.keys import KeyService
from .services.metrics import MetricsService
from .store import cluster as cluster_store
from .store import integrations as integration_store
from .store import keys as key_store
from .succession import Succession
from .templates import TemplateRegistry

log = logging.getLogger(__name__)
KEY_RESYNC_SECONDS = 10.0  # with several instances: a key revoked on one stops working on all within this


@dataclass
class Orchestrator:
    """Every long-lived part; each is built once here and handed to the parts that use it."""

    settings: Settings
    db: Database
    bus: Bus
    broker: ManagedBroker | None
    accounts: BrokerAccounts
    event_log: EventLog
    outbox: Outbox
    handler: Handler
    recorder: IntegrationRecorder
    runtime: Runtime
    reconciler: Reconciler
    box: SecretBox
    cluster: Cluster
    services: Services
    tail: LogTail | None  # with several instances: follows every instance's events for this one's listeners

    @classmethod
    def build(cls, settings: Settings) -> Orchestrator:
        """Create the parts (nothing is started yet)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.resolved_database_url)
        db.migrate()
        cluster_id = db.run_now(cluster_store.cluster_id)  # the runtimes label workers with it
        templates = TemplateRegistry(
            settings.templates_dir, settings.worker_environment, tts_directory=settings.tts_templates_dir
        ).load()
        secret_key = settings.persistent_secret("secret.key", settings.secret_key, factory="fernet")
        box = SecretBox(secret_key)
        identity = Identity(
            settings.instance_id,
            settings.api_url,
            templates_fingerprint(templates.templates),
            secret_fingerprint(secret_key),
        )
        admin_token = settings.persistent_secret("admin.token", settings.admin_token)
        broker_settings = settings.broker
        admin_password = settings.persistent_secret("broker.password", broker_settings.password)
        # On SQLite one instance runs (its data directory is locked); on PostgreSQL several may share the broker.
        clustered = not settings.resolved_database_url.startswith("sqlite")
        bus = Bus(
            broker_settings.url,
            username=broker_settings.username,
            password=admin_password,
            receive_maximum=settings.handler.receive_maximum,
            ca_file=str(broker_settings.ca_file) if broker_settings.ca_file else None,
            client_id=instance_client_id(settings.instance_id) if clustered else CLIENT_ID,
            share_group="orchestrator" if clustered else None,
        )
        broker = None
        if broker_settings.mode == "managed":
            broker = ManagedBroker(broker_settings, settings.data_dir / "mosquitto", admin_password, bus)
        accounts = BrokerAccounts(db, bus, box, broker_settings.username, broker_settings.tenant)
        watch = BrokerWatch(bus)
        event_log = EventLog(db, settings.events, settings.instance_id)
        sessions = WorkerSessions(db, bus, box, broker, watch, accounts)
        checkpoint = f"{CHECKPOINT_TOPIC}/{settings.instance_id}" if clustered else CHECKPOINT_TOPIC
        # With several instances each listener follows the log's tail, which has every instance's events.
        outbox = Outbox(event_log, bus, sessions, checkpoint, announce=not clustered)
        tail = LogTail(event_log, bus) if clustered else None
        cluster = Cluster(
            db,
            identity,
            settings.lease_seconds,
            own_broker=settings.broker.mode == "managed",
            single=not clustered,
            progress=outbox.covered_through,
            successor=Succession(bus, outbox) if clustered else None,
        )
        handler = Handler(settings.handler, db, bus, outbox)
        recorder = IntegrationRecorder(db, bus, outbox, settings.dead_letters_per_integration)
        runtime = make_runtime(settings, allowed_images=templates.images, cluster=cluster_id)
        reconciler = Reconciler(
            settings=settings, db=db, bus=bus, runtime=runtime, templates=templates, box=box, cluster=cluster
        )
        keys = KeyService(db, bus, accounts, box, admin_token)
        health = HealthService(
            bus=bus,
            outbox=outbox,
            log=event_log,
            runtime=runtime,
            templates=templates,
            reconciler=reconciler,
            broker=broker,
            accounts=accounts,
            watch=watch,
            sessions=sessions,
            cluster=cluster,
        )
        services = Services(
            applications=ApplicationService(db, handler, reconciler, keys),
            keys=keys,
            devices=DeviceService(db, handler),
            integrations=IntegrationService(
                db=db,
                templates=templates,
                box=box,
                reconciler=reconciler,
                keys=keys,
                bus=bus,
                handler=handler,
                runtime=runtime,
            ),
            dead_letters=DeadLetterService(db, bus),
            events=EventService(db, event_log, bus, settings.events),
            health=health,
            metrics=MetricsService(db, health),
            templates=templates,
        )
        return cls(
            settings,
            db,
            bus,
            broker,
            accounts,
            event_log,
            outbox,
            handler,
            recorder,
            runtime,
            reconciler,
            box,
            cluster,
            services,
            tail,
        )

    async def start(self) -> None:
        """Write broker accounts, start the broker, load the registry, connect, reconcile (migrated at build)."""
        await self.runtime.check()  # e.g. a Kubernetes namespace that does not exist: said at start
        await self.cluster.join()  # refuses a configuration the running instances do not share
        self.cluster.start()
        if self.tail is not None and not self.settings.public_url:
            log.warning(
                "several instances may share this database, but ORCH_PUBLIC_URL is not set: workers get this "
                "instance's own API address (%s) and are started again by whichever instance leads next; set "
                "it to an address that reaches every instance (a load balancer or a Kubernetes Service)",
                self.settings.api_url,
            )
        if len(self.box.keys) > 1:
            count = await self.db.run(integration_store.reseal_secrets, self.box)
            log.info("secrets of %d integrations sealed with the first ORCH_SECRET_KEY; the others can go", count)
        await self.services.keys.refresh()
        if self.tail is not None:
            self.services.keys.start_resync(KEY_RESYNC_SECONDS)
        if self.broker is not None:
            if not self.settings.broker.worker_url:
                self.broker.extra_hosts = self.runtime.extra_listen_addresses()
            records = await self.db.run(key_store.all_keys)
            await self.broker.start(records, self.settings.broker.tenant)
            self.broker.supervise()
        await self.handler.start()  # the registry is in memory before the first message arrives
        self.outbox.start()
        if self.tail is not None:
            await self.tail.start()
        self.accounts.start()
        await self.bus.start()
        await self.accounts.ready(1)  # workers log in with their keys: their accounts come first
        self.reconciler.start()
        log.info(
            "orchestrator ready: API on %s, runtime %s, broker %s (%s)%s",
            self.settings.api_url,
            self.runtime.name,
            self.settings.broker.url,
            self.settings.broker.mode,
            f"; devices connect to {', '.join(self.broker.listeners)}" if self.broker else "",
        )

    async def stop(self) -> None:
        """Stop reconciling, then the runtime's own workers, the event flow, the connection and the broker.

        With other instances running, the workers keep running: the next leader adopts them.
        """
        await self.reconciler.stop()
        others = await self.cluster.others_alive()
        await self.runtime.close(keep_workers=bool(others) or not self.cluster.leading)
        await self.outbox.stop()
        # The lease goes once this instance's workers are stopped (no overlap); the record once its events
        # are all published (else the leader publishes what is left).
        await self.cluster.stop(published_all=self.outbox.all_published)
        if self.tail is not None:
            await self.tail.stop()
        await self.services.keys.stop()
        await self.accounts.stop()
        await self.handler.stop()
        await self.bus.stop()
        if self.broker is not None:
            await self.broker.stop()
        await self.db.close()
