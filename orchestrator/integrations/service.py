"""Integrations in the database: create from a template, update, enable, delete, and the worker spec."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..config import Settings
from ..db.models import ApiKey, Integration, IntegrationActivity, IntegrationStats, utcnow
from ..errors import ConflictError, NotFoundError, ValidationFailed
from ..handler import registry
from ..handler.keys import INTEGRATION_SCOPES
from ..runtime.base import Runtime, WorkerSpec
from ..schemas import (
    IntegrationCounters,
    IntegrationCreate,
    IntegrationPublic,
    IntegrationStatus,
    IntegrationUpdate,
)
from ..templates import IntegrationTemplate, ResolvedConfig, TemplateRegistry, check_values
from .secrets import SecretBox


def resolve(
    template: IntegrationTemplate, values: dict[str, Any], kept_secrets: dict[str, Any] | None = None
) -> ResolvedConfig:
    """Check values against the template; ValidationFailed lists every problem at once."""
    resolved, problems = check_values(template, values, kept_secrets)
    if problems:
        raise ValidationFailed(problems)
    return resolved


def get_integration(session: Session, app_id: str, integration_id: str) -> Integration:
    """The integration, or NotFoundError (for the application too)."""
    record = session.get(Integration, (app_id, integration_id))
    if record is None:
        registry.get_application(session, app_id)
        raise NotFoundError("integration", integration_id)
    return record


def list_integrations(session: Session, *, app_id: str | None = None) -> list[Integration]:
    """Integrations of one application, or of all."""
    query = select(Integration).order_by(Integration.application_id, Integration.id)
    if app_id is not None:
        registry.get_application(session, app_id)
        query = query.where(Integration.application_id == app_id)
    return list(session.scalars(query))


def page_integrations(
    session: Session, *, app_id: str, limit: int, offset: int, state: str | None = None
) -> tuple[list[Integration], int]:
    """One page of an application's integrations, ordered by id, optionally in one state; and the total."""
    registry.get_application(session, app_id)
    query = select(Integration).where(Integration.application_id == app_id)
    if state is not None:
        query = query.where(Integration.actual_state == state)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    return list(session.scalars(query.order_by(Integration.id).limit(limit).offset(offset))), total


def _new_id(session: Session, app_id: str, template_id: str) -> str:
    while True:
        candidate = f"{template_id[:29]}-{secrets.token_hex(3)}"
        if session.get(Integration, (app_id, candidate)) is None:
            return candidate


def check_replicas(template: IntegrationTemplate, replicas: int) -> None:
    """Refuse more replicas than the template's image can run side by side."""
    if replicas > template.max_replicas:
        message = f"the {template.name} integration runs at most {template.max_replicas} replica(s)"
        raise ValidationFailed([{"field": "replicas", "message": message}])


def create_integration(
    session: Session, *, templates: TemplateRegistry, box: SecretBox, app_id: str, data: IntegrationCreate
) -> Integration:
    """Create an integration (and its worker key); the reconciler starts it."""
    registry.get_application(session, app_id)
    template = templates.get(data.template_id)
    check_replicas(template, data.replicas)
    resolved = resolve(template, data.config)
    integration_id = data.id or _new_id(session, app_id, template.id)
    if session.get(Integration, (app_id, integration_id)) is not None:
        raise ConflictError(f"integration {integration_id!r} exists already in {app_id}")
    key_record, key = registry.create_key(
        session,
        app_id=app_id,
        name=f"integration {integration_id}",
        scopes=INTEGRATION_SCOPES,
        integration_id=integration_id,
    )
    record = Integration(
        application_id=app_id,
        id=integration_id,
        name=data.name or template.name,
        template_id=template.id,
        template_version=template.version,
        config=resolved.public,
        secrets_encrypted=box.seal(resolved.secrets) if resolved.secrets else "",
        key_id=key_record.id,
        key_encrypted=box.seal(key),
        enabled=data.enabled,
        replicas=data.replicas,
        resources=data.resources.model_dump(exclude_none=True),
        actual_state="pending",
    )
    session.add(record)
    session.flush()
    return record


def update_integration(
    session: Session,
    *,
    templates: TemplateRegistry,
    box: SecretBox,
    app_id: str,
    integration_id: str,
    data: IntegrationUpdate,
) -> Integration:
    """Apply a partial update; a config change is checked against the template as a whole."""
    record = get_integration(session, app_id, integration_id)
    if data.config is not None:
        template = templates.get(record.template_id)
        public = dict(record.config)
        kept = dict(box.open(record.secrets_encrypted, {}))
        for name, value in data.config.items():
            spec = template.field(name)
            target = kept if spec is not None and spec.secret else public
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
        resolved = resolve(template, {**public, **kept})
        record.config = resolved.public
        record.secrets_encrypted = box.seal(resolved.secrets) if resolved.secrets else ""
        record.template_version = template.version
        record.generation += 1
    if data.name is not None:
        record.name = data.name
    if data.replicas is not None:
        check_replicas(templates.get(record.template_id), data.replicas)
        record.replicas = data.replicas
    if data.resources is not None:
        record.resources = data.resources.model_dump(exclude_none=True)
    record.updated_at = utcnow()
    return record


def set_enabled(session: Session, *, app_id: str, integration_id: str, enabled: bool) -> Integration:
    """Enable or disable (pause without losing the configuration)."""
    record = get_integration(session, app_id, integration_id)
    record.enabled = enabled
    record.updated_at = utcnow()
    return record


def reseal_secrets(session: Session, box: SecretBox) -> int:
    """Seal every stored secret with the first key (a key rotation); returns how many integrations."""
    records = list(session.scalars(select(Integration)))
    for record in records:
        record.secrets_encrypted = box.reseal(record.secrets_encrypted)
        record.key_encrypted = box.reseal(record.key_encrypted)
    return len(records)


def delete_integration(session: Session, *, app_id: str, integration_id: str) -> Integration:
    """Delete the record, its key, its history and counters; returns it so the worker can be removed."""
    record = get_integration(session, app_id, integration_id)
    session.execute(delete(ApiKey).where(ApiKey.id == record.key_id))
    for table in (IntegrationActivity, IntegrationStats):
        session.execute(delete(table).where(table.application_id == app_id, table.integration_id == integration_id))
    session.delete(record)
    return record


def to_public(record: Integration, box: SecretBox) -> IntegrationPublic:
    """The API view: configuration without secrets (only which secrets are set), status, counters."""
    return IntegrationPublic(
        id=record.id,
        application_id=record.application_id,
        name=record.name,
        template_id=record.template_id,
        template_version=record.template_version,
        config=record.config,
        secrets_set=sorted(box.open(record.secrets_encrypted, {})),
        enabled=record.enabled,
        replicas=record.replicas,
        resources=record.resources,
        status=IntegrationStatus(
            desired="running" if record.enabled else "stopped",
            actual=record.actual_state,
            since=record.state_since,
            last_error=record.last_error,
            last_error_at=record.last_error_at,
            restart_count=record.restart_count,
            runtime=record.runtime,
            handle=record.runtime_handle,
        ),
        counters=IntegrationCounters(
            delivered=record.delivered,
            failed=record.failed,
            retried=record.retried,
            last_delivery_at=record.last_delivery_at,
        ),
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def build_spec(
    record: Integration, template: IntegrationTemplate, box: SecretBox, settings: Settings, runtime: Runtime
) -> WorkerSpec:
    """The worker spec: the template's image, the field environment, and how to reach the handler."""
    resolved = resolve(template, record.config, box.open(record.secrets_encrypted, {}))
    key = box.open(record.key_encrypted)
    broker_url, api_url = runtime.worker_urls(settings.broker.url, settings.api_url)
    environment = {
        **resolved.environment,
        "HANDLER_MQTT_URL": settings.broker.worker_url or broker_url,
        "HANDLER_API_URL": settings.public_url or api_url,
        "HANDLER_APPLICATION_ID": record.application_id,
        "HANDLER_API_KEY": key,
        "INTEGRATION_ID": record.id,
    }
    return WorkerSpec(
        name=record.runtime_name,
        application_id=record.application_id,
        integration_id=record.id,
        template_id=template.id,
        template_version=template.version,
        image=template.image.reference,
        python_module=template.image.python_module,
        environment=environment,
        secret_env=(*resolved.secret_env, "HANDLER_API_KEY"),
        replicas=record.replicas,
        memory_mb=record.resources.get("memory_mb", template.resources.memory_mb),
        cpus=record.resources.get("cpus", template.resources.cpus),
    )
