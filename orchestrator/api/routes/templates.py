"""The template gallery."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from ...errors import NotFoundError
from ...templates import IntegrationTemplate
from ..deps import PrincipalDep, ServicesDep

router = APIRouter(prefix="/api/v1/templates", tags=["templates"])


def _public(template: IntegrationTemplate) -> dict[str, Any]:
    data = template.model_dump(mode="json", exclude={"environment"})
    if template.logo and not template.logo.startswith(("http://", "https://")):
        data["logo"] = f"/api/v1/templates/{template.id}/logo"
    return data


@router.get("")
async def list_templates(services: ServicesDep, who: PrincipalDep) -> list[dict[str, Any]]:
    """Every template: what the gallery shows, and the fields of the add-integration form."""
    return [_public(template) for template in sorted(services.templates.templates.values(), key=lambda t: t.name)]


@router.get("/{template_id}")
async def get_template(template_id: str, services: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    """One template."""
    return _public(services.templates.get(template_id))


@router.get("/{template_id}/logo", response_class=FileResponse)
async def get_logo(template_id: str, services: ServicesDep) -> FileResponse:
    """The template's logo file (public, so <img> tags can load it)."""
    path = services.templates.logo_path(template_id)
    if path is None or not path.is_file():
        raise NotFoundError("logo", template_id)
    return FileResponse(path, headers={"Cache-Control": "max-age=3600"})
