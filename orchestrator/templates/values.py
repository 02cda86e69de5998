"""Check a user's field values against a template and turn them into a worker's environment."""

from __future__ import annotations

import functools
import importlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from uritemplate import URITemplate

from .models import PLACEHOLDER, IntegrationTemplate, TemplateField


class FieldProblem(ValueError):
    """One field value is wrong; the message says why."""


def coerce(spec: TemplateField, value: Any) -> Any:
    """The value converted to the field's type and checked against enum and pattern."""
    value = _convert(spec, value)
    if "\x00" in as_text(value):  # values become environment variables, which cannot hold one
        raise FieldProblem("must not contain a NUL character")
    if spec.enum is not None and value not in spec.enum:
        raise FieldProblem("must be one of " + ", ".join(map(str, spec.enum)))
    if spec.pattern is not None and not re.fullmatch(spec.pattern, as_text(value)):
        raise FieldProblem(f"does not match the pattern {spec.pattern}")
    if spec.minimum is not None and value < spec.minimum:
        raise FieldProblem(f"must be at least {as_text(spec.minimum)}")
    if spec.maximum is not None and value > spec.maximum:
        raise FieldProblem(f"must be at most {as_text(spec.maximum)}")
    return value


def _convert(spec: TemplateField, value: Any) -> Any:
    kind = spec.type
    if kind in ("string", "text", "url"):
        if not isinstance(value, str):
            raise FieldProblem("must be a string")
        if kind == "url":
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https", "mqtt", "mqtts") or not parts.hostname:
                raise FieldProblem("must be a URL like https://example.com/path")
        return value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise FieldProblem("must be true or false")
    if kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise FieldProblem("must be an integer")
        try:
            return int(value)
        except ValueError:
            raise FieldProblem("must be an integer") from None
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise FieldProblem("must be a number")
        try:
            return float(value)
        except ValueError:
            raise FieldProblem("must be a number") from None
    # json: any JSON value; a string is parsed, so forms can send text
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as err:
            raise FieldProblem(f"must be valid JSON ({err})") from None
    return value


def as_text(value: Any) -> str:
    """A value as an environment variable string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class ResolvedConfig:
    """A checked configuration: what the API may show, what it may not, and the worker environment."""

    public: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    secret_env: list[str] = field(default_factory=list)


def check_values(
    template: IntegrationTemplate,
    values: dict[str, Any],
    kept_secrets: dict[str, Any] | None = None,
    worker_environment: Mapping[str, str] | None = None,
) -> tuple[ResolvedConfig, list[dict[str, str]]]:
    """Validate every field at once; returns the resolved config and the list of problems.

    `kept_secrets` holds the secret values already stored: a secret left out of `values` keeps its value.
    `worker_environment`: what the orchestrator gives every worker besides (the image's check sees it too).
    """
    problems: list[dict[str, str]] = []
    resolved = ResolvedConfig()
    kept_secrets = kept_secrets or {}
    for name in values:
        if template.field(name) is None:
            problems.append({"field": f"config.{name}", "message": f"unknown field for template {template.id}"})
    for spec in template.fields:
        raw = values.get(spec.id)
        if raw is None and spec.secret:
            raw = kept_secrets.get(spec.id)
        if raw is None or raw == "":
            raw = spec.default
        if raw is None or raw == "":
            if spec.required:
                problems.append({"field": f"config.{spec.id}", "message": f"{spec.label} is required"})
            continue
        try:
            value = coerce(spec, raw)
        except FieldProblem as err:
            problems.append({"field": f"config.{spec.id}", "message": f"{spec.label} {err}"})
            continue
        (resolved.secrets if spec.secret else resolved.public)[spec.id] = value
    if not problems:
        resolved.environment, resolved.secret_env = build_environment(template, {**resolved.public, **resolved.secrets})
        problems = image_check(template, {**resolved.environment, **(worker_environment or {})})
    return resolved, problems


EnvironmentCheck = Callable[[Mapping[str, str]], list[tuple[str, str]]]


@functools.cache
def load_check(reference: str) -> EnvironmentCheck:
    """The function a template names as `module:function`; ImportError or AttributeError if it is not there."""
    module_name, _, function_name = reference.partition(":")
    function: EnvironmentCheck = getattr(importlib.import_module(module_name), function_name)
    return function


def image_check(template: IntegrationTemplate, environment: dict[str, str]) -> list[dict[str, str]]:
    """What the image's own start-up check refuses in this environment, as problems on the fields that set it."""
    if template.check is None:
        return []
    problems = []
    for variable, message in load_check(template.check)(environment):
        field_id = field_of(template, variable)
        spec = template.field(field_id) if field_id else None
        label = spec.label if spec is not None else variable
        problems.append({"field": f"config.{field_id}" if field_id else "config", "message": f"{label}: {message}"})
    return problems


def field_of(template: IntegrationTemplate, variable: str) -> str | None:
    """The field whose value sets this environment variable (directly, through `${field}` or an RFC 6570
    expansion), if any."""
    for spec in template.fields:
        if spec.env == variable:
            return spec.id
    fixed = template.environment.get(variable)
    used = PLACEHOLDER.findall(json.dumps(fixed)) if fixed is not None else []
    if variable in template.uri_environment:
        used += uri_variables(template.uri_environment[variable])
    return used[0] if used else None


# A webhook template tag inside an RFC 6570 template (`/{{device_id}}/up`): rendered per message, not expanded.
MUSTACHE_TAG = re.compile(r"(\{\{\{?[^{}]*\}?\}\})")


def uri_parts(source: str) -> list[tuple[str, bool]]:
    """An RFC 6570 template cut into (text, is a webhook tag) parts."""
    return [(part, index % 2 == 1) for index, part in enumerate(MUSTACHE_TAG.split(source)) if part]


def uri_variables(value: str | dict[str, str]) -> list[str]:
    """The field ids an RFC 6570 template (or an object of them) expands."""
    sources = value.values() if isinstance(value, dict) else [value]
    return [
        name
        for source in sources
        for part, is_tag in uri_parts(source)
        if not is_tag
        for name in URITemplate(part).variable_names
    ]


def _expand_one(source: str, variables: dict[str, Any]) -> str:
    return "".join(part if is_tag else str(URITemplate(part).expand(variables)) for part, is_tag in uri_parts(source))


def _expand(value: str | dict[str, str], values: dict[str, Any]) -> str:
    variables: dict[str, Any] = {k: as_text(v) for k, v in values.items() if v is not None and v != ""}
    if isinstance(value, dict):
        return as_text({key: _expand_one(source, variables) for key, source in value.items()})
    return _expand_one(value, variables)


def _substitute(value: Any, values: dict[str, Any], used: set[str]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            used.add(match.group(1))
            found = values.get(match.group(1))
            return "" if found is None else as_text(found)

        return PLACEHOLDER.sub(replace, value)
    if isinstance(value, dict):
        return {key: _substitute(item, values, used) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, values, used) for item in value]
    return value


def build_environment(template: IntegrationTemplate, values: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The worker environment from field values, and the names of variables that carry a secret."""
    environment: dict[str, str] = {}
    secret_env: list[str] = []
    secret_ids = template.secret_field_ids
    for name, fixed in template.environment.items():
        used: set[str] = set()
        environment[name] = as_text(_substitute(fixed, values, used))
        if used & secret_ids:
            secret_env.append(name)
    for name, uri in template.uri_environment.items():
        environment[name] = _expand(uri, values)
        if set(uri_variables(uri)) & secret_ids:
            secret_env.append(name)
    for spec in template.fields:
        if spec.env and spec.id in values:
            environment[spec.env] = as_text(values[spec.id])
            if spec.secret:
                secret_env.append(spec.env)
    return environment, sorted(secret_env)
