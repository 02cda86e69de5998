"""Applications: create, read, change, delete (with everything that belongs to them)."""

from __future__ import annotations

from ..db import Database
from ..db.models import Application
from ..handler.core import Handler
from ..reconciler import Reconciler
from ..schemas import ApplicationCreate, ApplicationUpdate
from ..store import applications as store
from ..store import integrations as integration_store
from .keys import KeyService, Principal


class ApplicationService:
    """Applications in the database, in the handler's registry, and what deleting one stops."""

    def __init__(self, db: Database, handler: Handler, reconciler: Reconciler, keys: KeyService) -> None:
        self.db = db
        self.handler = handler
        self.reconciler = reconciler
        self.keys = keys

    async def create(self, data: ApplicationCreate) -> Application:
        """Create an application; ConflictError if the id is taken."""
        application = await self.db.run(store.create_application, data=data)
        self.handler.application_added(application.id)
        return application

    async def list(self, caller: Principal) -> list[Application]:
        """Applications the caller may see: all for the admin, its own for a key."""
        items = await self.db.read(store.list_applications)
        return [item for item in items if caller.admin or item.id == caller.application_id]

    async def get(self, app_id: str) -> Application:
        """One application, or NotFoundError."""
        return await self.db.read(store.get_application, app_id)

    async def update(self, app_id: str, data: ApplicationUpdate) -> Application:
        """Change name or description."""
        return await self.db.run(store.update_application, app_id=app_id, data=data)

    async def delete(self, app_id: str) -> None:
        """Delete an application: its workers stop, its devices, keys and events go."""
        integrations = await self.db.run(integration_store.list_integrations, app_id=app_id)
        await self.db.run(store.delete_application, app_id=app_id)
        self.handler.application_removed(app_id)
        for record in integrations:
            await self.reconciler.remove(record)
        await self.keys.changed()
