"""Applications in the database."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..db.models import Application, DeadLetter, EventRecord, IntegrationActivity, IntegrationStats
from ..errors import ConflictError, NotFoundError
from ..schemas import ApplicationCreate, ApplicationUpdate


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
    """Delete an application with its devices, keys, downlinks, integration records and logged events."""
    application = get_application(session, app_id)
    for table in (IntegrationActivity, IntegrationStats, DeadLetter, EventRecord):
        session.execute(delete(table).where(table.application_id == app_id))
    session.delete(application)
