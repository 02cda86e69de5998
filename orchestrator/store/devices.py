"""Devices in the database."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db.models import Device, utcnow
from ..errors import ConflictError, NotFoundError
from ..schemas import DeviceCreate, DevicePublic, DeviceUpdate
from .applications import get_application


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


# What a page returns: the public columns as plain rows. Loading ORM objects (identity map, instance state) for a
# read-only page cost most of the request's CPU.
PUBLIC_COLUMNS = [Device.__table__.c[name] for name in DevicePublic.model_fields]


def list_devices(session: Session, *, app_id: str, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    """One page of devices (the public fields as dicts), ordered by id, and the total."""
    count = select(func.count()).select_from(Device).where(Device.application_id == app_id)
    # The total comes with the page (a subquery PostgreSQL and SQLite run once): one round trip, not three.
    query = (
        select(*PUBLIC_COLUMNS, count.scalar_subquery().label("total"))
        .where(Device.application_id == app_id)
        .order_by(Device.device_id)
        .limit(limit)
        .offset(offset)
    )
    rows = session.connection().execute(query).all()  # through the connection: no ORM loading
    if not rows:  # past the end, or no such application (NotFoundError)
        get_application(session, app_id)
        return [], session.scalar(count) or 0
    names = list(DevicePublic.model_fields)
    return [dict(zip(names, row[:-1], strict=True)) for row in rows], rows[0][-1]  # the last column: the total


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
