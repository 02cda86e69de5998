"""Applications and their keys."""

from __future__ import annotations

from fastapi import APIRouter, status

from ...schemas import ApplicationCreate, ApplicationPublic, ApplicationUpdate, KeyCreate, KeyCreated, KeyPublic
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(prefix="/api/v1/applications", tags=["applications"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApplicationPublic)
async def create_application(body: ApplicationCreate, services: ServicesDep, who: PrincipalDep) -> object:
    """Create an application (admin)."""
    who.require_admin()
    return await services.applications.create(body)


@router.get("", response_model=list[ApplicationPublic])
async def list_applications(services: ServicesDep, who: PrincipalDep) -> object:
    """Applications the caller may see: all for the admin, its own for a key."""
    return await services.applications.list(who)


@router.get("/{app_id}", response_model=ApplicationPublic)
async def get_application(app_id: str, services: ServicesDep, who: PrincipalDep) -> object:
    """One application."""
    who.require(app_id, "devices:read")
    return await services.applications.get(app_id)


@router.patch("/{app_id}", response_model=ApplicationPublic)
async def update_application(app_id: str, body: ApplicationUpdate, services: ServicesDep, who: PrincipalDep) -> object:
    """Change name or description."""
    who.require(app_id, "manage")
    return await services.applications.update(app_id, body)


@router.delete("/{app_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_application(app_id: str, services: ServicesDep, who: PrincipalDep) -> None:
    """Delete an application: its integrations stop, its devices, keys and events go (admin)."""
    who.require_admin()
    await services.applications.delete(app_id)


@router.post("/{app_id}/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(app_id: str, body: KeyCreate, services: ServicesDep, who: PrincipalDep) -> object:
    """Create a key; the answer is the only time the key is shown."""
    who.require(app_id, "manage")
    return await services.keys.create(app_id, body)


@router.get("/{app_id}/keys", response_model=list[KeyPublic])
async def list_keys(app_id: str, services: ServicesDep, who: PrincipalDep) -> object:
    """Keys of the application (ids, names and scopes; never the keys)."""
    who.require(app_id, "manage")
    return await services.keys.list(app_id)


@router.delete("/{app_id}/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_key(app_id: str, key_id: str, services: ServicesDep, who: PrincipalDep) -> None:
    """Revoke a key (HTTP at once; MQTT for new connections and every publish or subscribe)."""
    who.require(app_id, "manage")
    await services.keys.delete(app_id, key_id)
