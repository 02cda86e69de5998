"""Dependencies shared by the routers: the orchestrator, and who is calling (admin token or key)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..app import Orchestrator
from ..errors import AuthenticationError, PermissionDenied
from ..handler import keys

bearer = HTTPBearer(auto_error=False, description="The admin token, or an application key (ik.…)")


def get_orchestrator(request: Request) -> Orchestrator:
    """The running orchestrator."""
    return request.app.state.orchestrator


OrchestratorDep = Annotated[Orchestrator, Depends(get_orchestrator)]


@dataclass(frozen=True)
class Principal:
    """The caller: the admin, or a key of one application with some scopes."""

    admin: bool
    application_id: str | None = None
    scopes: frozenset[str] = frozenset()
    key_id: str | None = None

    def require(self, app_id: str, scope: str) -> None:
        """PermissionDenied unless the caller may do `scope` on this application."""
        if self.admin:
            return
        if self.application_id != app_id:
            raise PermissionDenied(f"key {self.key_id} belongs to application {self.application_id}, not {app_id}")
        if scope not in self.scopes:
            raise PermissionDenied(f"key {self.key_id} lacks the {scope} scope")

    def require_admin(self) -> None:
        """PermissionDenied unless the caller holds the admin token."""
        if not self.admin:
            raise PermissionDenied("this needs the admin token, not an application key")


def get_principal(
    orchestrator: OrchestratorDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Authenticate the bearer token: the admin token or a key (checked against its hash)."""
    if credentials is None or not credentials.credentials:
        raise AuthenticationError("send Authorization: Bearer <admin token or application key>")
    token = credentials.credentials
    if hmac.compare_digest(token.encode(), orchestrator.admin_token.encode()):
        return Principal(admin=True)
    key_id = keys.key_id_of(token)
    cached = orchestrator.keys.get(key_id) if key_id else None
    if cached is None or not keys.matches(token, cached.secret_hash):
        raise AuthenticationError("the token is neither the admin token nor a valid application key")
    return Principal(False, cached.application_id, cached.scopes, cached.key_id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
