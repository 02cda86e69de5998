"""Applications, keys and devices in the database (synchronous; the API runs these in a thread)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db.models import ApiKey, Application, Device, IntegrationActivity, IntegrationStats, utcnow
from ..errors import ConflictError, NotFoundError
from ..schemas import ApplicationCreate, ApplicationUpdate, DeviceCreate, DevicePublic, DeviceUpdate
from . import keys


def get_application(session: Session, app_id: str) -> Application:
    """The application, or NotFoundError."""
    application = session.get(Application, app_id)
    if application is None:
        raise NotFoundError("application", app_id)
    return application


def create_application(session: Session, *, data: ApplicationCreate) -> Application:
    """Create an application; ConflictError if the id is taken."""
    if session.get(Application, data.id) is not None:
        raise ConflictError(f"application {data.id!r} exists already")
    application = Application(id=data.id, name=data.name, description=data.description)
    session.add(application)
    session.flush()
    return application


def update_application(session: Session, *, app_id: str, data: ApplicationUpdate) -> Application:
    """Change name or description."""
    application = get_application(session, app_id)
    for name, value in data.model_dump(exclude_unset=True).items():
        if value is not None:
            setattr(application, name, value)
    return application


def list_applications(session: Session) -> list[Application]:
    """Every application, by id."""
    return list(session.scalars(select(Application).order_by(Application.id)))


def delete_application(session: Session, *, app_id: str) -> None:
    """Delete an application with its devices, keys, downlinks and integration records."""
    application = get_application(session, app_id)
    for table in (IntegrationActivity, IntegrationStats):
        session.execute(delete(table).where(table.application_id == app_id))
    session.delete(application)


# -- keys --------------------------------------------------------------------------------------


def create_key(
    session: Session, *, app_id: str, name: str, scopes: list[str], integration_id: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key; returns the record and the key itself (shown once)."""
    get_application(session, app_id)
    new = keys.generate()
    record = ApiKey(
        id=new.key_id,
        application_id=app_id,
        name=name,
        scopes=sorted(set(scopes)),
        secret_hash=keys.secret_hash(new.key),
        mqtt_password_hash=keys.mosquitto_hash(new.key),
        integration_id=integration_id,
    )
    session.add(record)
    session.flush()
    return record, new.key


def list_keys(session: Session, *, app_id: str) -> list[ApiKey]:
    """Keys of an application (without secrets, which are not kept)."""
    get_application(session, app_id)
    return list(session.scalars(select(ApiKey).where(ApiKey.application_id == app_id).order_by(ApiKey.created_at)))


def delete_key(session: Session, *, app_id: str, key_id: str) -> None:
    """Revoke a key; the keys of integrations go with their integration, not by hand."""
    record = session.get(ApiKey, key_id)
    if record is None or record.application_id != app_id:
        raise NotFoundError("key", key_id)
    if record.integration_id:
        raise ConflictError(f"key {key_id} belongs to integration {record.integration_id}; delete that instead")
    session.delete(record)


def all_keys(session: Session) -> list[ApiKey]:
    """Every key, for the broker's password file and the API's key cache."""
    return list(session.scalars(select(ApiKey)))


# -- devices -----------------------------------------------------------------------------------


def device_json(device: Device) -> dict[str, Any]:
    """The public JSON of a device, as the API returns it and device events carry it."""
    return DevicePublic.model_validate(device).model_dump(mode="json")


def get_device(session: Session, app_id: str, device_id: str) -> Device:
    """The device, or NotFoundError (for the application too)."""
    device = session.get(Device, (app_id, device_id))
    if device is None:
        get_application(session, app_id)
        raise NotFoundError("device", device_id)
    return device


def list_devices(session: Session, *, app_id: str, limit: int, offset: int) -> tuple[list[Device], int]:
    """One page of devices, ordered by id, and the total."""
    get_application(session, app_id)
    query = select(Device).where(Device.application_id == app_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    items = list(session.scalars(query.order_by(Device.device_id).limit(limit).offset(offset)))
    return items, total


def create_device(session: Session, *, app_id: str, data: DeviceCreate) -> Device:
    """Register a device; ConflictError if the id is taken in this application."""
    get_application(session, app_id)
    fields = data.model_dump(exclude_none=True)
    device = Device(application_id=app_id, **fields)
    session.add(device)
    try:
        session.flush()
    except IntegrityError as err:
        raise ConflictError(f"device {data.device_id!r} exists already in {app_id}") from err
    return device


def update_device(session: Session, *, app_id: str, device_id: str, data: DeviceUpdate) -> Device:
    """Change the given fields of a device."""
    device = get_device(session, app_id, device_id)
    empty: dict[str, Any] = {"name": "", "description": "", "attributes": {}}
    for name, value in data.model_dump(exclude_unset=True).items():
        setattr(device, name, empty.get(name) if value is None else value)
    device.updated_at = utcnow()
    return device


def delete_device(session: Session, *, app_id: str, device_id: str) -> Device:
    """Remove a device; returns what it was, for the delete event."""
    device = get_device(session, app_id, device_id)
    session.delete(device)
    return device
