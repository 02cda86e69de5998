"""Integrations: create from a template, configure, pause, restart, delete; watch (logs, activity, stats, test)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker_sdk import topics
from worker_sdk.messages import end_device_ids, now_iso
from worker_sdk.redact import Redactor, secret_strings

from ..bus import Bus, Listener
from ..db import Database
from ..db.models import Integration, IntegrationActivity, IntegrationStats, utcnow
from ..errors import ConflictError, ValidationFailed
from ..handler.core import Handler
from ..integrations.spec import resolve
from ..reconciler import Reconciler
from ..runtime.base import Runtime, WorkerState
from ..schemas import (
    IntegrationCreate,
    IntegrationCreated,
    IntegrationPublic,
    IntegrationTest,
    IntegrationUpdate,
    TestOutcome,
    ValidationResult,
)
from ..secretbox import SecretBox
from ..store import applications as application_store
from ..store import devices as device_store
from ..store import integrations as store
from ..templates import TemplateRegistry, particle
from .keys import KeyService

log = logging.getLogger(__name__)

TEST_TIMEOUT_SECONDS = 20.0


class IntegrationService:
    """Every change to an integration: the record (secrets sealed), its worker key, then the reconciler."""

    def __init__(
        self,
        *,
        db: Database,
        templates: TemplateRegistry,
        box: SecretBox,
        reconciler: Reconciler,
        keys: KeyService,
        bus: Bus,
        handler: Handler,
        runtime: Runtime,
    ) -> None:
        self.db = db
        self.templates = templates
        self.box = box
        self.reconciler = reconciler
        self.keys = keys
        self.bus = bus
        self.handler = handler
        self.runtime = runtime

    def public(self, values: dict[str, Any]) -> dict[str, Any]:
        """The API view of an integration's `store.PUBLIC_COLUMNS`: configuration without secrets (only which
        secrets are set), status, counters; plain data that IntegrationPublic validates."""
        return {
            "id": values["id"],
            "application_id": values["application_id"],
            "name": values["name"],
            "template_id": values["template_id"],
            "template_version": values["template_version"],
            "config": values["config"],
            "secrets_set": sorted(self.box.open(values["secrets_encrypted"], {})),
            "enabled": values["enabled"],
            "replicas": values["replicas"],
            "resources": values["resources"],
            "status": {
                "desired": WorkerState.RUNNING if values["enabled"] else WorkerState.STOPPED,
                "actual": values["actual_state"],
                "since": values["state_since"],
                "last_error": values["last_error"],
                "last_error_at": values["last_error_at"],
                "restart_count": values["restart_count"],
                "runtime": values["runtime"],
                "handle": values["runtime_handle"],
            },
            "counters": {
                "delivered": values["delivered"],
                "failed": values["failed"],
                "retried": values["retried"],
                "duplicates": values["duplicates"],
                "dead_lettered": values["dead_lettered"],
                "last_delivery_at": values["last_delivery_at"],
            },
            "created_at": values["created_at"],
            "updated_at": values["updated_at"],
            "downlink_key_id": values["downlink_key_id"],
        }

    async def get(self, app_id: str, integration_id: str) -> IntegrationPublic:
        """One integration, or NotFoundError."""
        values = await self.db.read(store.public_integration, app_id, integration_id)
        return IntegrationPublic.model_validate(self.public(values))

    async def page(self, app_id: str, *, limit: int, offset: int, state: WorkerState | None = None) -> dict[str, Any]:
        """A page of an application's integrations, ordered by id, optionally in one state (plain data shaped as
        Page[IntegrationPublic])."""
        rows, total = await self.db.read(
            store.page_integrations, app_id=app_id, limit=limit, offset=offset, state=state
        )
        return {"items": [self.public(row) for row in rows], "total": total, "offset": offset, "limit": limit}

    async def validate(self, app_id: str, data: IntegrationCreate) -> ValidationResult:
        """Check a configuration without creating anything: every problem, field by field."""
        await self.db.read(application_store.get_application, app_id)
        template = self.templates.get(data.template_id)
        try:
            resolve(template, data.config, worker_environment=self.templates.worker_environment)
        except ValidationFailed as err:
            return ValidationResult(valid=False, errors=err.errors)
        return ValidationResult(valid=True)

    async def import_particle(self, app_id: str, body: bytes) -> IntegrationCreated:
        """A webhook integration from a Particle webhook definition (JSON, whatever the request's content type
        said); ValidationFailed names each Particle field it cannot take, and the answer's notes say what became
        of the others."""
        try:
            definition = json.loads(body)
        except ValueError as err:
            raise particle.ParticleDefinitionInvalid(
                [{"field": "(body)", "message": f"not valid JSON ({err})"}]
            ) from err
        imported = particle.read_definition(definition)
        if imported.problems:  # and what the template and image refuse in the rest: every problem at once
            checked = await self.validate(app_id, imported.request)
            converted = [problem for problem in checked.errors if problem["field"] in imported.origins]
            more = particle.in_particle_terms(ValidationFailed(converted), imported).errors if converted else []
            refused = {problem["field"] for problem in imported.problems}
            problems = imported.problems + [problem for problem in more if problem["field"] not in refused]
            raise particle.ParticleDefinitionInvalid(problems)
        try:
            created = await self.create(app_id, imported.request)
        except ValidationFailed as err:  # the template's and the image's checks, said in the definition's terms
            raise particle.in_particle_terms(err, imported) from err
        log.info("Particle webhook imported as %s/%s: %s", app_id, created.id, "; ".join(imported.notes) or "as is")
        return created.model_copy(update={"notes": imported.notes})

    async def create(self, app_id: str, data: IntegrationCreate) -> IntegrationCreated:
        """Create from a template and field values, with a worker key; the worker starts right away (if enabled)."""
        record = await self.db.run(
            store.create_integration, templates=self.templates, box=self.box, app_id=app_id, data=data
        )
        await self.keys.changed(app_id, _key_ids(record))
        await self.reconciler.reconcile_one(app_id, record.id)
        created = IntegrationCreated.model_validate((await self.get(app_id, record.id)).model_dump())
        if record.downlink_key_encrypted:  # shown this once; the worker gets it from the sealed copy
            created.downlink_api_key = self.box.open(record.downlink_key_encrypted)
        return created

    async def update(self, app_id: str, integration_id: str, data: IntegrationUpdate) -> IntegrationPublic:
        """Change name, config (merged; omitted secrets kept), replicas or resources; the worker is replaced."""
        await self.db.run(
            store.update_integration,
            templates=self.templates,
            box=self.box,
            app_id=app_id,
            integration_id=integration_id,
            data=data,
        )
        await self.reconciler.reconcile_one(app_id, integration_id)
        return await self.get(app_id, integration_id)

    async def delete(self, app_id: str, integration_id: str) -> None:
        """Delete: the worker is stopped and removed, its key revoked, before this returns."""
        record = await self.db.run(store.delete_integration, app_id=app_id, integration_id=integration_id)
        await self.reconciler.remove(record)
        await self.keys.changed(app_id, _key_ids(record))

    async def set_enabled(self, app_id: str, integration_id: str, enabled: bool) -> IntegrationPublic:
        """Enable (start again; what arrived meanwhile is delivered) or disable (pause, configuration kept)."""
        await self.db.run(store.set_enabled, app_id=app_id, integration_id=integration_id, enabled=enabled)
        await self.reconciler.reconcile_one(app_id, integration_id)
        return await self.get(app_id, integration_id)

    async def restart(self, app_id: str, integration_id: str) -> IntegrationPublic:
        """Replace the worker with a fresh one."""
        await self.db.read(store.get_integration, app_id, integration_id)  # 404 if there is none
        await self.reconciler.restart(app_id, integration_id)
        return await self.get(app_id, integration_id)

    # -- watching ------------------------------------------------------------------------------

    async def logs(self, app_id: str, integration_id: str, tail: int) -> tuple[list[str], AsyncIterator[str]]:
        """The worker's last log lines, and an iterator of new ones, both with secrets masked."""
        record = await self.db.read(store.get_integration, app_id, integration_id)
        secrets = secret_strings(self.box.open(record.secrets_encrypted, {}))
        keys = [self.box.open(record.key_encrypted)]
        if record.downlink_key_encrypted:
            keys.append(self.box.open(record.downlink_key_encrypted))
        redactor = Redactor([*secrets, *keys])
        lines = [redactor.text(line) for line in await self.runtime.logs(record.runtime_name, tail)]

        async def follow() -> AsyncIterator[str]:
            async for line in self.runtime.follow(record.runtime_name):
                yield redactor.text(line)

        return lines, follow()

    async def activity(
        self, app_id: str, integration_id: str, kind: str | None, limit: int
    ) -> list[IntegrationActivity]:
        """Recent deliveries, retries and errors, newest first."""

        def load(session: Session) -> list[IntegrationActivity]:
            store.get_integration(session, app_id, integration_id)
            query = select(IntegrationActivity).where(
                IntegrationActivity.application_id == app_id, IntegrationActivity.integration_id == integration_id
            )
            if kind:
                query = query.where(IntegrationActivity.kind == kind)
            return list(session.scalars(query.order_by(IntegrationActivity.id.desc()).limit(limit)))

        return await self.db.read(load)

    async def stats(self, app_id: str, integration_id: str, hours: int) -> dict[str, object]:
        """Delivered, failed and retried per minute over the last hours (minutes without traffic left out)."""

        def load(session: Session) -> list[IntegrationStats]:
            store.get_integration(session, app_id, integration_id)
            since = utcnow() - timedelta(hours=hours)
            return list(
                session.scalars(
                    select(IntegrationStats)
                    .where(
                        IntegrationStats.application_id == app_id,
                        IntegrationStats.integration_id == integration_id,
                        IntegrationStats.minute >= since,
                    )
                    .order_by(IntegrationStats.minute)
                )
            )

        buckets = await self.db.read(load)
        return {
            "minutes": [
                {"minute": b.minute, "delivered": b.delivered, "failed": b.failed, "retried": b.retried}
                for b in buckets
            ]
        }

    async def test(self, app_id: str, integration_id: str, body: IntegrationTest) -> TestOutcome:
        """Send a sample uplink (or named event) through this integration only, and report what happened (delivery
        or error). It is one the integration selects: a named event under its prefix when it takes no uplinks, from
        one of its devices when it names some."""
        record = await self.db.run(store.get_integration, app_id, integration_id)
        if not record.enabled or record.actual_state != WorkerState.RUNNING:
            raise ConflictError(f"integration {integration_id} is {record.actual_state}, not running; enable it first")
        config = record.config or {}
        selected = [name.strip() for name in str(config.get("events") or "uplink").split(",")]
        chosen_devices = [name.strip() for name in str(config.get("devices") or "").split(",") if name.strip()]
        prefix = str(config.get("event_prefix") or "")
        if body.device_id and chosen_devices and body.device_id not in chosen_devices:
            message = f"the integration takes only the events of {', '.join(chosen_devices)}"
            raise ValidationFailed([{"field": "device_id", "message": message}])
        if body.event_name is not None and not body.event_name.startswith(prefix):
            message = f"the integration takes only events whose name starts with {prefix!r}"
            raise ValidationFailed([{"field": "event_name", "message": message}])
        device_id = body.device_id or (chosen_devices[0] if chosen_devices else None)
        if device_id is None:
            devices, _ = await self.db.read(device_store.list_devices, app_id=app_id, limit=1, offset=0)
            device_id = devices[0]["device_id"] if devices else "test-device"
        device = self.handler.device(app_id, device_id) or {}
        correlation_id = f"test:{uuid.uuid4().hex}"
        received_at = now_iso()
        uplink: dict[str, Any] = {
            "end_device_ids": end_device_ids(app_id, device_id, device.get("dev_eui"), device.get("join_eui")),
            "correlation_ids": [correlation_id],
            "received_at": received_at,
        }
        event_name = body.event_name
        takes_uplinks = "uplink" in selected and "uplink".startswith(prefix)
        if event_name is None and "publish" in selected and not takes_uplinks:
            event_name = prefix or "test"
        if event_name is not None:  # Particle's named event, its data the sample's JSON
            uplink["publish"] = {
                "name": event_name,
                "data": json.dumps(body.decoded_payload, separators=(",", ":")),
                "ttl": 60,
                "private": True,
                "published_at": received_at,
            }
        else:
            uplink["uplink_message"] = {
                "f_port": body.f_port,
                "frm_payload": body.frm_payload,
                "decoded_payload": body.decoded_payload,
                "received_at": received_at,
            }
        with self.bus.listening(app_id) as listener:  # listen before sending, so the answer cannot slip by
            await self.bus.publish(topics.integration_topic(app_id, integration_id, "test"), uplink)
            answer = await _wait_for_answer(listener, integration_id, correlation_id)
        if answer is None:
            return TestOutcome(
                outcome="no answer",
                message=f"no delivery or error within {TEST_TIMEOUT_SECONDS:.0f} s; "
                "a target that keeps failing is still being retried: see the activity",
                event=None,
                uplink=uplink,
            )
        outcome = "delivered" if answer["event"] == "delivery" else "failed"
        return TestOutcome(outcome=outcome, message=str(answer.get("message", "")), event=answer, uplink=uplink)


async def _wait_for_answer(listener: Listener, integration_id: str, correlation_id: str) -> dict[str, Any] | None:
    """The integration's delivery or final error event for this correlation id (retries are skipped)."""
    try:
        async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
            while True:
                event = await listener.get()
                if event is None or event.name not in ("integration.delivery", "integration.error"):
                    continue
                data = json.loads(event.data)
                ids = (data.get("details") or {}).get("correlation_ids") or []
                if event.integration_id == integration_id and correlation_id in ids:
                    return data
    except TimeoutError:
        return None


def _key_ids(record: Integration) -> list[str]:
    """The keys an integration owns: its worker's, and its target's downlink key if it has one."""
    return [record.key_id, *([record.downlink_key_id] if record.downlink_key_id else [])]
