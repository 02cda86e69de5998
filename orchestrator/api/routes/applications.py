"""Applications and their keys."""

from __future__ import annotations

from fastapi import APIRouter, status

from ...handler import registry
from ...integrations import service
from ...schemas import ApplicationCreate, ApplicationPublic, ApplicationUpdate, KeyCreate, KeyCreated, KeyPublic
from ..deps import OrchestratorDep, PrincipalDep

router = APIRouter(prefix="/api/v1/applications", tags=["applications"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ApplicationPublic)
async def create_application(body: ApplicationCreate, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """Create an application (admin)."""
    who.require_admin()
    return await orch.handler.run_db(registry.create_application, data=body)


@router.get("", response_model=list[ApplicationPublic])
async def list_applications(orch: OrchestratorDep, who: PrincipalDep) -> object:
    """Applications the caller may see: all for the admin, its own for a key."""
    items = await orch.handler.run_db(registry.list_applications)
    return [item for item in items if who.admin or item.id == who.application_id]


@router.get("/{app_id}", response_model=ApplicationPublic)
async def get_application(app_id: str, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """One application."""
    who.require(app_id, "devices:read")
    return await orch.handler.run_db(registry.get_application, app_id)


@router.patch("/{app_id}", response_model=ApplicationPublic)
async def update_application(app_id: str, body: ApplicationUpdate, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """Change name or description."""
    who.require(app_id, "manage")
    return await orch.handler.run_db(registry.update_application, app_id=app_id, data=body)


@router.delete("/{app_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_application(app_id: str, orch: OrchestratorDep, who: PrincipalDep) -> None:
    """Delete an application: its integrations stop, its devices and keys go (admin)."""
    who.require_admin()
    integrations = await orch.handler.run_db(service.list_integrations, app_id=app_id)
    await orch.handler.run_db(registry.delete_application, app_id=app_id)
    for record in integrations:
        await orch.reconciler.remove(record)
    orch.handler.forget_application(app_id)
    await orch.refresh_keys()


@router.post("/{app_id}/keys", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(app_id: str, body: KeyCreate, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """Create a key; the answer is the only time the key is shown."""
    who.require(app_id, "manage")
    record, key = await orch.handler.run_db(
        registry.create_key, app_id=app_id, name=body.name, scopes=list(body.scopes)
    )
    await orch.refresh_keys()
    return KeyCreated(**KeyPublic.model_validate(record).model_dump(), key=key)


@router.get("/{app_id}/keys", response_model=list[KeyPublic])
async def list_keys(app_id: str, orch: OrchestratorDep, who: PrincipalDep) -> object:
    """Keys of the application (ids, names and scopes; never the keys)."""
    who.require(app_id, "manage")
    return await orch.handler.run_db(registry.list_keys, app_id=app_id)


@router.delete("/{app_id}/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_key(app_id: str, key_id: str, orch: OrchestratorDep, who: PrincipalDep) -> None:
    """Revoke a key (HTTP at once; MQTT for new connections and every publish or subscribe)."""
    who.require(app_id, "manage")
    await orch.handler.run_db(registry.delete_key, app_id=app_id, key_id=key_id)
    await orch.refresh_keys()
