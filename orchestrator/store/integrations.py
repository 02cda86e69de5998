"""Integrations in the database: create from a template, update, enable, delete."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session, load_only

from ..db.models import ApiKey, DeadLetter, Integration, IntegrationActivity, IntegrationStats, utcnow
from ..errors import ConflictError, NotFoundError
from ..integrations.spec import check_replicas, resolve
from ..keys import INTEGRATION_SCOPES
from ..schemas import IntegrationCreate, IntegrationUpdate
from ..secretbox import SecretBox
from ..templates import TemplateRegistry
from .applications import get_application
from .keys import create_key


def get_integration(session: Session, app_id: str, integration_id: str) -> Integration:
    """The integration, or NotFoundError (for the application too)."""
    record = session.get(Integration, (app_id, integration_id))
    if record is None:
        get_application(session, app_id)
        raise NotFoundError("integration", integration_id)
    return record


def list_integrations(session: Session, *, app_id: str | None = None) -> list[Integration]:
    """Integrations of one application, or of all."""
    query = select(Integration).order_by(Integration.application_id, Integration.id)
    if app_id is not None:
        get_application(session, app_id)
        query = query.where(Integration.application_id == app_id)
    return list(session.scalars(query))


def integrations_to_check(session: Session) -> list[Integration]:
    """Every integration with only what a reconcile pass compares (the rest is read again before acting)."""
    query = (
        select(Integration)
        .options(
            load_only(
                Integration.application_id,
                Integration.id,
                Integration.enabled,
                Integration.replicas,
                Integration.actual_state,
                Integration.template_id,
                Integration.template_version,
                Integration.config_hash,
            )
        )
        .order_by(Integration.application_id, Integration.id)
    )
    return list(session.scalars(query))


# What the API shows of an integration (IntegrationService.public), never the worker key. Reads for the API load
# these columns as plain dicts: ORM objects (identity map, instance state) cost most of a page's CPU.
PUBLIC_COLUMNS = [
    column
    for column in Integration.__table__.c
    if column.name
    not in ("key_id", "key_encrypted", "downlink_key_encrypted", "generation", "config_hash", "delivery_latency")
]


def _public_rows(session: Session, query: Select[Any]) -> list[dict[str, Any]]:
    """Rows as dicts of their columns, through the connection: no ORM loading."""
    result = session.connection().execute(query)
    names = list(result.keys())
    return [dict(zip(names, row, strict=True)) for row in result]


def public_integration(session: Session, app_id: str, integration_id: str) -> dict[str, Any]:
    """The integration's PUBLIC_COLUMNS, or NotFoundError (for the application too)."""
    query = select(*PUBLIC_COLUMNS).where(Integration.application_id == app_id, Integration.id == integration_id)
    rows = _public_rows(session, query)
    if not rows:
        get_application(session, app_id)
        raise NotFoundError("integration", integration_id)
    return rows[0]


def page_integrations(
    session: Session, *, app_id: str, limit: int, offset: int, state: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """One page of an application's integrations (their PUBLIC_COLUMNS), ordered by id, optionally in one state;
    and the total."""
    wanted = [Integration.application_id == app_id]
    if state is not None:
        wanted.append(Integration.actual_state == state)
    count = select(func.count()).select_from(Integration).where(*wanted)
    # The total comes with the page (a subquery PostgreSQL and SQLite run once): one round trip, not three.
    query = (
        select(*PUBLIC_COLUMNS, count.scalar_subquery().label("total"))
        .where(*wanted)
        .order_by(Integration.id)
        .limit(limit)
        .offset(offset)
    )
    rows = _public_rows(session, query)
    if not rows:  # past the end, none in this state, or no such application (NotFoundError)
        get_application(session, app_id)
        return [], session.scalar(count) or 0
    return rows, rows[0]["total"]


def _new_id(session: Session, app_id: str, template_id: str) -> str:
    while True:
        candidate = f"{template_id[:29]}-{secrets.token_hex(3)}"
        if session.get(Integration, (app_id, candidate)) is None:
            return candidate


def create_integration(
    session: Session, *, templates: TemplateRegistry, box: SecretBox, app_id: str, data: IntegrationCreate
) -> Integration:
    """Create an integration (and its worker key); the reconciler starts it."""
    get_application(session, app_id)
    template = templates.get(data.template_id)
    check_replicas(template, data.replicas)
    resolved = resolve(template, data.config, worker_environment=templates.worker_environment)
    integration_id = data.id or _new_id(session, app_id, template.id)
    if session.get(Integration, (app_id, integration_id)) is not None:
        raise ConflictError(f"integration {integration_id!r} exists already in {app_id}")
    key_record, key = create_key(
        session,
        box=box,
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
        **_downlink_key(session, box, app_id, integration_id, template.downlink_api_key),
        enabled=data.enabled,
        replicas=data.replicas,
        resources=data.resources.model_dump(exclude_none=True),
        actual_state="pending",
    )
    session.add(record)
    session.flush()
    return record


def _downlink_key(session: Session, box: SecretBox, app_id: str, integration_id: str, wanted: bool) -> dict[str, Any]:
    """A key with only downlinks:write for the integration's target platform, when its template asks for one."""
    if not wanted:
        return {}
    record, key = create_key(
        session, box=box, app_id=app_id, name=f"downlinks from integration {integration_id}", scopes=["downlinks:write"]
    )
    return {"downlink_key_id": record.id, "downlink_key_encrypted": box.seal(key)}


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
        resolved = resolve(template, {**public, **kept}, worker_environment=templates.worker_environment)
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


def note_error(session: Session, message: str) -> None:
    """Record an error on every enabled integration (their state stays: nothing could be checked)."""
    session.execute(
        update(Integration)
        .where(Integration.enabled.is_(True))
        .values(last_error=message[:2000], last_error_at=utcnow())
    )


def reseal_secrets(session: Session, box: SecretBox) -> int:
    """Seal every stored secret with the first key (a key rotation); returns how many integrations."""
    records = list(session.scalars(select(Integration)))
    for record in records:
        record.secrets_encrypted = box.reseal(record.secrets_encrypted)
        record.key_encrypted = box.reseal(record.key_encrypted)
        if record.downlink_key_encrypted:
            record.downlink_key_encrypted = box.reseal(record.downlink_key_encrypted)
    for key in session.scalars(select(ApiKey)):
        if key.key_sealed is not None:
            key.key_sealed = box.reseal(key.key_sealed)
    return len(records)


def delete_integration(session: Session, *, app_id: str, integration_id: str) -> Integration:
    """Delete the record, its key, its history and counters; returns it so the worker can be removed."""
    record = get_integration(session, app_id, integration_id)
    session.execute(delete(ApiKey).where(ApiKey.id.in_([record.key_id, record.downlink_key_id or record.key_id])))
    for table in (IntegrationActivity, IntegrationStats, DeadLetter):
        session.execute(delete(table).where(table.application_id == app_id, table.integration_id == integration_id))
    session.delete(record)
    return record
