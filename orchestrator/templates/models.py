"""The schema of an integration template file (one YAML file per template, `id` = file name)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from ..schemas import MAX_REPLICAS

ID_PATTERN = r"^[a-z0-9](?:-?[a-z0-9])*$"
FIELD_ID_PATTERN = r"^[a-z][a-z0-9_]*$"
ENV_PATTERN = r"^[A-Z][A-Z0-9_]*$"
PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")

FieldType = Literal["string", "text", "integer", "number", "boolean", "url", "json"]
Scalar = str | int | float | bool


class TemplateField(BaseModel):
    """One value a user fills in, mapped to the environment variable the image reads."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=FIELD_ID_PATTERN, description="Key in the integration's config")
    label: str = Field(min_length=1)
    description: str = ""
    type: FieldType = "string"
    required: bool = False
    default: Any = None
    secret: bool = Field(False, description="Write-only: never returned, logged or labelled")
    enum: list[Scalar] | None = Field(None, min_length=1)
    pattern: str | None = None
    minimum: float | None = Field(None, description="Smallest allowed value (integer and number fields)")
    maximum: float | None = Field(None, description="Largest allowed value (integer and number fields)")
    env: str | None = Field(None, pattern=ENV_PATTERN, description="Environment variable it sets")
    placeholder: str | None = None
    advanced: bool = Field(False, description="Shown folded in the console")


class ImageRef(BaseModel):
    """The generic image that runs integrations made from this template."""

    model_config = ConfigDict(extra="forbid")

    repository: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9._/-]*$")
    tag: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
    python_module: str | None = Field(
        None, pattern=r"^[A-Za-z_][\w.]*$", description="Entry module for the process runtime"
    )

    @property
    def reference(self) -> str:
        """`repository:tag`."""
        return f"{self.repository}:{self.tag}"


class Resources(BaseModel):
    """Default limits of one worker; an integration may override them."""

    model_config = ConfigDict(extra="forbid")

    memory_mb: int = Field(128, ge=16, le=65536)
    cpus: float = Field(0.5, gt=0, le=64)


class IntegrationTemplate(BaseModel):
    """A template: what the gallery shows, which image runs, and how fields become environment."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN, max_length=36)
    name: str = Field(min_length=1, max_length=80)
    description: str = Field(min_length=1)
    logo: str | None = Field(None, description="File next to the template (logos/x.svg) or a URL")
    documentation_url: HttpUrl | None = None
    version: str
    category: str = "general"
    image: ImageRef
    resources: Resources = Resources()
    max_replicas: int = Field(
        MAX_REPLICAS,
        ge=1,
        le=MAX_REPLICAS,
        description="1 for images that cannot share an integration's work (one connection per device)",
    )
    fields: list[TemplateField] = Field(default_factory=list)
    environment: dict[str, Any] = Field(
        default_factory=dict, description="Fixed variables; `${field}` inserts a field's value"
    )
    uri_environment: dict[str, str | dict[str, str]] = Field(
        default_factory=dict,
        description="Variables made by RFC 6570 expansion of the fields (`{/region}`, `{?key}`; as The Things "
        "Stack expands its templates' base-url and paths); an object becomes a JSON object of expansions",
    )
    downlink_api_key: bool = Field(
        False,
        description="Give each integration a key (scope downlinks:write) its target uses to push downlinks back; "
        "the worker gets it with HANDLER_DOWNLINK_API_KEY and the push and replace URLs (TTS's "
        "create-downlink-api-key)",
    )
    check: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="`module:function` of the image's own configuration check (the code its worker runs at "
        "start): called with the worker's environment, what it returns is refused before anything runs",
    )

    @field_validator("version")
    @classmethod
    def _semantic_version(cls, value: str) -> str:
        if not re.fullmatch(r"\d+\.\d+\.\d+(?:[-+][\w.]+)?", value):
            raise ValueError("must look like 1.2.0 (semantic version)")
        return value

    def field(self, field_id: str) -> TemplateField | None:
        """The field with this id, if any."""
        return next((item for item in self.fields if item.id == field_id), None)

    @property
    def secret_field_ids(self) -> set[str]:
        """Ids of the write-only fields."""
        return {item.id for item in self.fields if item.secret}
