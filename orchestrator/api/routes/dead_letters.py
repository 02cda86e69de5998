"""An integration's dead letters: messages that failed for good, to read, send again or delete."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from ...schemas import DeadLetterOutcome, DeadLetterPublic, DeadLetterSelection, Page
from ..deps import MAX_OFFSET, PrincipalDep, ServicesDep
from ..responses import page_answer

router = APIRouter(
    prefix="/api/v1/applications/{app_id}/integrations/{integration_id}/dead-letters", tags=["dead letters"]
)


@router.get("", response_model=Page[DeadLetterPublic])
async def list_dead_letters(
    app_id: str,
    integration_id: str,
    services: ServicesDep,
    who: PrincipalDep,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
) -> object:
    """The integration's dead letters, oldest first, each with its whole message, error, request and answer."""
    who.require(app_id, "integrations:read")
    return page_answer(await services.dead_letters.page(app_id, integration_id, limit=limit, offset=offset))


@router.get("/{letter_id:int}", response_model=DeadLetterPublic)
async def get_dead_letter(
    app_id: str, integration_id: str, letter_id: int, services: ServicesDep, who: PrincipalDep
) -> object:
    """One dead letter."""
    who.require(app_id, "integrations:read")
    return await services.dead_letters.get(app_id, integration_id, letter_id)


@router.post("/replay", response_model=DeadLetterOutcome)
async def replay_dead_letters(
    app_id: str, integration_id: str, body: DeadLetterSelection, services: ServicesDep, who: PrincipalDep
) -> DeadLetterOutcome:
    """Send dead letters to this integration's workers again (`ids`, or `all`); they leave the list, and one
    that fails again comes back as a new dead letter."""
    who.require(app_id, "manage")
    return DeadLetterOutcome(count=await services.dead_letters.replay(app_id, integration_id, body.ids))


@router.post("/delete", response_model=DeadLetterOutcome)
async def delete_dead_letters(
    app_id: str, integration_id: str, body: DeadLetterSelection, services: ServicesDep, who: PrincipalDep
) -> DeadLetterOutcome:
    """Delete dead letters (`ids`, or `all`)."""
    who.require(app_id, "manage")
    return DeadLetterOutcome(count=await services.dead_letters.delete(app_id, integration_id, body.ids))


@router.delete("/{letter_id:int}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_dead_letter(
    app_id: str, integration_id: str, letter_id: int, services: ServicesDep, who: PrincipalDep
) -> None:
    """Delete one dead letter."""
    who.require(app_id, "manage")
    await services.dead_letters.delete(app_id, integration_id, [letter_id])
