"""The Things Stack's webhook templates (its YAML format, as TheThingsNetwork/lorawan-webhook-templates publishes
them) turned into templates of ours that run on the webhook image and send what The Things Stack would."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .models import FIELD_ID_PATTERN, ID_PATTERN, ImageRef, IntegrationTemplate, Resources, TemplateField
from .values import uri_variables

# The Things Stack's message types (`paths` keys) and the events they are here; None: not produced here.
MESSAGE_TYPES: dict[str, str | None] = {
    "uplink-message": "uplink",
    "uplink-normalized": None,
    "join-accept": "join.accept",
    "downlink-ack": "downlink.ack",
    "downlink-nack": "downlink.nack",
    "downlink-sent": "downlink.sent",
    "downlink-failed": "downlink.failed",
    "downlink-queued": "downlink.queued",
    "downlink-queue-invalidated": None,
    "location-solved": "location.solved",
    "service-data": "service.data",
}
KNOWN_KEYS = {
    "template-id",
    "name",
    "description",
    "logo-url",
    "info-url",
    "documentation-url",
    "tts-documentation-url",
    "stack-documentation-url",
    "fields",
    "format",
    "headers",
    "create-downlink-api-key",
    "base-url",
    "paths",
    "field-mask",
}
FIELD_KEYS = {"id", "name", "description", "secret", "default-value", "optional"}
HEADER_FIELD = re.compile(r"\{([^{}]+)\}")  # headers: `{field}` replaced directly, not RFC 6570
URI_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^{}]*)\}")
DEFAULT_IMAGE = ImageRef(repository="iot-orchestrator/webhook", tag="0.1.0", python_module="webhook_worker")


class BrokenTemplate(ValueError):
    """The file is not a readable The Things Stack template (not YAML, not a mapping, a wrong type)."""


class NotImportable(ValueError):
    """A valid template that cannot run here; the text says exactly why."""


@dataclass
class Imported:
    """A converted template, and what of the original it leaves out."""

    template: IntegrationTemplate
    notes: list[str] = field(default_factory=list)


def field_id(tts_id: str) -> str:
    """Our field id for one of The Things Stack's (`api-key` -> `api_key`)."""
    return tts_id.strip().lower().replace("-", "_").replace(".", "_")


def _text(data: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise BrokenTemplate(f"{key} is missing")
        return None
    if not isinstance(value, str | int | float):
        raise BrokenTemplate(f"{key} must be text")
    return str(value)


def _fields(data: dict[str, Any]) -> tuple[list[TemplateField], dict[str, str]]:
    """Our fields, and a map from The Things Stack's ids to ours."""
    raw = data.get("fields") or []
    if not isinstance(raw, list):
        raise BrokenTemplate("fields must be a list")
    fields: list[TemplateField] = []
    ids: dict[str, str] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not _text(item, "id"):
            raise BrokenTemplate(f"fields[{index}] must be a mapping with an id")
        unknown = sorted(set(item) - FIELD_KEYS)
        if unknown:
            raise BrokenTemplate(f"fields[{index}]: unknown keys {', '.join(unknown)}")
        ours = field_id(str(item["id"]))
        if not re.fullmatch(FIELD_ID_PATTERN, ours):
            raise NotImportable(f"field id {item['id']!r} cannot be a field id here (letters, digits, - and _)")
        if ours in ids.values():
            raise NotImportable(f"fields[{index}]: field id {item['id']!r} is {ours!r} here, as another field's is")
        ids[str(item["id"])] = ours
        secret = bool(item.get("secret", False))
        default = item.get("default-value")
        default = None if default in (None, "") or secret else str(default)
        fields.append(
            TemplateField(
                id=ours,
                label=_text(item, "name") or ours,
                description=_text(item, "description") or "",
                secret=secret,
                required=not item.get("optional", False) and default is None,
                default=default,
            )
        )
    return fields, ids


# Variables The Things Stack fills in paths per message, and the webhook's own tags for them.
MESSAGE_VARIABLES = {
    "appID": "application_id",
    "devID": "device_id",
    "devEUI": "dev_eui",
    "joinEUI": "join_eui",
    "devAddr": "dev_addr",
}


def _uri(source: str, ids: dict[str, str], where: str) -> str:
    """An RFC 6570 template with The Things Stack's field ids renamed to ours, and its per-message variables
    (`{devID}`, ...) turned into webhook tags, rendered (percent-encoded) for each message."""

    def rename(match: re.Match[str]) -> str:
        operator, names = match.group(1), match.group(2)
        if names in MESSAGE_VARIABLES:
            if operator not in ("", "/"):
                raise NotImportable(f"{where}: {{{operator}{names}}} (only {{{names}}} and {{/{names}}} are supported)")
            return operator + "{{" + MESSAGE_VARIABLES[names] + "}}"
        renamed = []
        for spec in names.split(","):
            name, modifier = re.match(r"^([^:*]*)(.*)$", spec.strip()).groups()  # type: ignore[union-attr]
            if name not in ids:
                raise NotImportable(f"{where}: {{{name}}} names no field of the template")
            renamed.append(ids[name] + modifier)
        return "{" + operator + ",".join(renamed) + "}"

    return URI_EXPRESSION.sub(rename, source)


def _headers(data: dict[str, Any], ids: dict[str, str], secret_ids: set[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Header templates with `${field}`: plain ones, and those that carry a secret field."""
    raw = data.get("headers") or {}
    if not isinstance(raw, dict):
        raise BrokenTemplate("headers must be a mapping")
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str | int | float):
            raise BrokenTemplate(f"headers.{name} must be text")
        used: set[str] = set()

        def replace(match: re.Match[str], used: set[str] = used, header: str = str(name)) -> str:
            if match.group(1) not in ids:
                raise NotImportable(f"headers.{header}: {{{match.group(1)}}} names no field of the template")
            used.add(ids[match.group(1)])
            return "${" + ids[match.group(1)] + "}"

        text = HEADER_FIELD.sub(replace, str(value))
        (secret if used & secret_ids else plain)[str(name)] = text
    return plain, secret


def _logo(data: dict[str, Any]) -> str | None:
    """The logo's URL: only an http(s) one (a path would name a file on the orchestrator's machine)."""
    url = _text(data, "logo-url")
    return url if url and url.lower().startswith(("http://", "https://")) else None


def convert(data: Any, webhook: IntegrationTemplate | None = None) -> Imported:
    """Our template for one of The Things Stack's (parsed YAML); `webhook` gives the image, resources and check.

    BrokenTemplate: the file is wrong. NotImportable: it is right but cannot run here (protobuf, ...).
    """
    if not isinstance(data, dict):
        raise BrokenTemplate("not a template: the file must hold a mapping (template-id, name, ...)")
    template_id = _text(data, "template-id", required=True) or ""
    notes = [f"unknown key {key} left out" for key in sorted(set(data) - KNOWN_KEYS)]
    if not re.fullmatch(ID_PATTERN, template_id) or len(template_id) > 36:
        raise NotImportable(f"template-id {template_id!r} is not an id here (lowercase letters, digits, dashes)")
    if str(data.get("format", "json")) != "json":
        raise NotImportable(f"format {data.get('format')!r}: only json is sent here")
    fields, ids = _fields(data)
    secret_ids = {item.id for item in fields if item.secret}
    base_url = _text(data, "base-url", required=True) or ""
    if not base_url.lower().startswith(("http://", "https://")):
        raise NotImportable(f"base-url {base_url!r} is not an http(s) URL")
    paths_raw = data.get("paths") or {}
    if not isinstance(paths_raw, dict):
        raise BrokenTemplate("paths must be a mapping")
    paths, events = {}, []
    for kind, path in paths_raw.items():
        if kind not in MESSAGE_TYPES:
            raise BrokenTemplate(f"paths: unknown message type {kind!r}")
        event = MESSAGE_TYPES[kind]
        if event is None:
            notes.append(f"{kind} is not produced here: its path is unused")
            continue
        paths[event] = _uri(str(path or ""), ids, f"paths.{kind}")
        events.append(event)
    if not events:
        raise NotImportable("no message type this handler produces has a path (uplink-message, join-accept, ...)")
    headers, secret_headers = _headers(data, ids, secret_ids)
    mask = data.get("field-mask") or []
    if not isinstance(mask, list) or not all(isinstance(item, str) for item in mask):
        raise BrokenTemplate("field-mask must be a list of paths")
    environment: dict[str, Any] = {"WEBHOOK_METHOD": "POST", "WEBHOOK_BODY_FORMAT": "message"}
    environment["WEBHOOK_EVENTS"] = ",".join(events)
    if headers:
        environment["WEBHOOK_HEADERS"] = headers
    if secret_headers:
        environment["WEBHOOK_SECRET_HEADERS"] = secret_headers
    if mask:
        environment["WEBHOOK_FIELD_MASK"] = ",".join(mask)
    base_url = _uri(base_url, ids, "base-url")
    hidden = sorted(secret_ids & {*uri_variables(base_url), *uri_variables(paths)})
    if hidden:  # a secret in the URL: the worker masks its value in what it reports (WORKER_SECRET_ENV)
        environment["WEBHOOK_SECRET_VALUES"] = ["${" + name + "}" for name in hidden]
    documentation = _text(data, "documentation-url") or _text(data, "info-url")
    description = _text(data, "description") or _text(data, "name") or template_id
    try:
        template = IntegrationTemplate(
            id=template_id,
            name=(_text(data, "name") or template_id)[:80],
            description=f"{description} (a template of The Things Stack's)",
            logo=_logo(data),
            documentation_url=documentation,
            version="1.0.0",
            category="the-things-stack",
            image=webhook.image if webhook else DEFAULT_IMAGE,
            resources=webhook.resources if webhook else Resources(),
            check=webhook.check if webhook else "webhook_worker.check:check_environment",
            fields=fields,
            environment=environment,
            uri_environment={"WEBHOOK_URL": base_url, "WEBHOOK_PATHS": paths},
            downlink_api_key=bool(data.get("create-downlink-api-key")),
        )
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise NotImportable(f"{where}: {first['msg']}") from err
    return Imported(template, notes)


def read_file(path: Path, webhook: IntegrationTemplate | None = None) -> Imported:
    """Convert one file; BrokenTemplate or NotImportable say why not."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise BrokenTemplate(f"cannot read: {err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise BrokenTemplate(f"{where}not valid YAML: {getattr(err, 'problem', err)}") from err
    if isinstance(data, list):
        raise NotImportable("a list, not a template (TTS's index of template ids)")
    return convert(data, webhook)


def template_files(directory: Path) -> list[Path]:
    """The Things Stack's template files in a folder (`*.yml`, as its repository names them, and `*.yaml`)."""
    return sorted([*directory.glob("*.yml"), *directory.glob("*.yaml")])


def to_yaml(imported: Imported, source: str) -> str:
    """Our template file for an imported template."""
    data = imported.template.model_dump(mode="json", exclude_defaults=True)
    data["version"] = imported.template.version
    header = f"# Imported from The Things Stack's template {source}.\n"
    header += "".join(f"# {note}\n" for note in imported.notes)
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
