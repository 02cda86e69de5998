"""Application keys in the database: only hashes are kept."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .. import keys
from ..db.models import ApiKey, Integration
from ..errors import ConflictError, NotFoundError
from ..secretbox import SecretBox
from .applications import get_application


def create_key(
    session: Session,
    *,
    box: SecretBox,
    app_id: str,
    name: str,
    scopes: list[str],
    integration_id: str | None = None,
    application_login: bool = False,
) -> tuple[ApiKey, str]:
    """Create a key; returns the record and the key itself (shown once).

    `application_login`: the key becomes the application's MQTT login (`{app}`), taking it from another key.
    """
    get_application(session, app_id)
    if application_login:
        session.execute(update(ApiKey).where(ApiKey.application_id == app_id).values(application_login=False))
    new = keys.generate()
    record = ApiKey(
        id=new.key_id,
        application_id=app_id,
        name=name,
        scopes=sorted(set(scopes)),
        secret_hash=keys.secret_hash(new.key),
        mqtt_password_hash=keys.mosquitto_hash(new.key),
        key_sealed=box.seal(new.key),
        application_login=application_login,
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
    owner = session.scalar(select(Integration.id).where(Integration.downlink_key_id == key_id))
    if owner is not None:
        raise ConflictError(f"key {key_id} is the downlink key of integration {owner}; delete that instead")
    session.delete(record)


def credentials(session: Session, key_ids: list[str] | None = None) -> list[tuple[str, str, str, list[str]]]:
    """(id, secret hash, application, scopes) of these keys (those that exist), or of every key: what
    authentication needs, as plain rows (loading a thousand ORM objects took ~70 ms)."""
    query = select(ApiKey.id, ApiKey.secret_hash, ApiKey.application_id, ApiKey.scopes)
    if key_ids is not None:
        query = query.where(ApiKey.id.in_(key_ids))
    return [tuple(row) for row in session.connection().execute(query)]  # type: ignore[misc]


def keys_for_accounts(session: Session, *, app_id: str, key_ids: list[str]) -> list[ApiKey]:
    """These keys (those that still exist) and the application's login key: what their broker accounts need."""
    query = select(ApiKey).where(
        ApiKey.id.in_(key_ids) | ((ApiKey.application_id == app_id) & ApiKey.application_login.is_(True))
    )
    return list(session.scalars(query))


def all_keys(session: Session) -> list[ApiKey]:
    """Every key, for the broker's password file and the API's key cache."""
    return list(session.scalars(select(ApiKey)))
