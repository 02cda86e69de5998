"""Dependencies shared by the routers: the services, and who is calling (admin token or key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..services import Principal, Services

# Bounds of paging parameters: past them a database cannot count (a 64-bit integer), so they are a 422, not a 500.
MAX_OFFSET = 2**31 - 1
MAX_ID = 2**63 - 1

bearer = HTTPBearer(auto_error=False, description="The admin token, or an application key (ik.…)")


# Both dependencies are `async def` although they await nothing: FastAPI runs a plain `def` dependency in a
# worker thread, two thread hops per request that cost more than the work itself (a key check is one SHA-256).


async def get_services(request: Request) -> Services:
    """The running orchestrator's services."""
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_principal(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Principal:
    """Authenticate the bearer token: the admin token or a key (checked against its hash)."""
    return services.keys.authenticate(credentials.credentials if credentials else None)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_stream_reader(
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    stream_token: Annotated[
        str | None, Query(description="A stream token (POST …/events/tokens), for clients that cannot send a header")
    ] = None,
) -> Principal:
    """Who reads the event stream: a bearer token as everywhere, or a short-lived stream token in the query (a
    browser's EventSource cannot send headers; the admin token and keys never go in a URL)."""
    if credentials is None and stream_token:
        return services.keys.authenticate_stream(stream_token)
    return services.keys.authenticate(credentials.credentials if credentials else None)


StreamReaderDep = Annotated[Principal, Depends(get_stream_reader)]
