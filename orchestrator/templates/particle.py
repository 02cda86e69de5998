"""Particle's webhook definitions (the JSON `particle webhook create` takes) turned into webhook integrations."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from worker_sdk.messages import ID_PATTERN

from ..errors import ValidationFailed
from ..schemas import IntegrationCreate

TEMPLATE_ID = "webhook"
METHODS = ("GET", "POST", "PUT", "DELETE")  # Particle's requestType: it has no PATCH
BODY_FIELDS = ("json", "form", "body")
# Particle always answers the device: on these topics unless the definition names others.
DEFAULT_RESPONSE_TOPIC = "{{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}"
DEFAULT_ERROR_RESPONSE_TOPIC = "{{PARTICLE_DEVICE_ID}}/hook-error/{{PARTICLE_EVENT_NAME}}"
# Headers whose values are credentials go to the sealed, write-only `secret_headers`.
# A credential's name: a word of it (api_key, X-Api-Key, accessToken, Authorization), not any word holding
# one (author, monkey).
SECRET_NAME = re.compile(r"(?:^|_)(?:api_?key|key|token|secret|password|passwd|auth|authorization)(?:_|$)")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: anything else fails only when sent
# A prefix with any other character could match no event: names here follow Particle's rule.
EVENT_PREFIX = re.compile(r"[A-Za-z0-9_\-/]{1,64}")
NAME_MAX_LENGTH = 200  # IntegrationCreate.name
AUTH_KEYS = ("username", "password")

# Every field of a definition, with the JSON Schema the API documents; anything else is refused by name.
_TEXT = {"type": "string"}
_TEXT_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_FLAG = {"type": "boolean"}
_PREFIX = {"type": "string", "pattern": "^" + EVENT_PREFIX.pattern + "$"}
DEFINITION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Particle webhook definition, as `particle webhook create` takes it",
    "properties": {
        "event": {**_PREFIX, "description": "Prefix of the event names that trigger the webhook"},
        "eventName": {**_PREFIX, "description": "The same as event (an alias)"},
        "url": {**_TEXT, "description": "http:// or https:// URL template"},
        "requestType": {"type": "string", "enum": list(METHODS), "default": "POST"},
        "headers": _TEXT_MAP,
        "query": _TEXT_MAP,
        "json": {"type": "object", "description": "JSON body template; only one of json, form and body"},
        "form": {"type": "object", "description": "Form body template"},
        "body": {**_TEXT, "description": "Raw body template"},
        "auth": {
            "type": "object",
            "properties": {"username": _TEXT, "password": _TEXT},
            "additionalProperties": False,
        },
        "responseTemplate": _TEXT,
        "responseTopic": _TEXT,
        "errorResponseTopic": _TEXT,
        "noDefaults": _FLAG,
        "rejectUnauthorized": _FLAG,
        "deviceID": _TEXT,
        "mydevices": _FLAG,
        "name": _TEXT,
        "disabled": _FLAG,
    },
    "required": ["url"],
    "anyOf": [{"required": ["event"]}, {"required": ["eventName"]}],
    "additionalProperties": False,
}
# What Particle's console and API add when they show or export a webhook: not part of the definition.
EXPORT_ONLY = frozenset({"id", "created_at", "integration_type", "productIdOrSlug", "orgIdOrSlug", "counter"})
FIELDS = frozenset(DEFINITION_SCHEMA["properties"])
# Particle's documented example (docs.particle.io, webhooks reference).
EXAMPLE: dict[str, Any] = {
    "eventName": "Metric",
    "url": "http://example.com",
    "headers": {"X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}"},
    "auth": {"username": "USERNAME", "password": "API_KEY"},
    "json": {"field1": "{{{indoorTemp}}}", "field2": "{{{outdoorTemp}}}", "created_at": "{{SPARK_PUBLISHED_AT}}"},
}


class ParticleDefinitionInvalid(ValidationFailed):
    """A Particle webhook definition that cannot be imported; `errors` names each Particle field at fault."""


@dataclass
class ParticleImport:
    """The integration to create from a definition, where each of its fields came from, and notes."""

    request: IntegrationCreate
    origins: dict[str, str] = field(default_factory=dict)  # API field (`config.url`) -> Particle field
    notes: list[str] = field(default_factory=list)
    problems: list[dict[str, str]] = field(default_factory=list)  # what it refused: request holds the rest


class _Conversion:
    """One definition being read: its fields by type, what they become, and one problem per field at fault."""

    def __init__(self, definition: dict[str, Any]) -> None:
        # null means "not set": refusing it would fail a file for a field it does not use
        self.values = {name: value for name, value in definition.items() if value is not None}
        self.problems: list[dict[str, str]] = []
        self.config: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.notes: list[str] = []

    def put(self, ours: str, value: Any, source: str) -> None:
        self.config[ours] = value
        self.origins[f"config.{ours}"] = source

    def refuse(self, name: str, message: str) -> None:
        self.problems.append({"field": name, "message": message})

    def text(self, name: str) -> str | None:
        value = self.values.get(name)
        if value is not None and not isinstance(value, str):
            self.refuse(name, "must be text")
            return None
        return value

    def flag(self, name: str) -> bool | None:
        value = self.values.get(name)
        if value is not None and not isinstance(value, bool):
            self.refuse(name, "must be true or false")
            return None
        return value

    def text_map(self, name: str, what: str) -> dict[str, str] | None:
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.refuse(name, f"must be an object of {what} names to text")
            return None
        valid = True
        for key, item in value.items():
            if not key.strip():
                self.refuse(name, f"a {what} needs a name")
                valid = False
            elif not isinstance(item, str):
                self.refuse(f"{name}.{key}", "must be text (a template)")
                valid = False
        return value if valid else None


def convert(definition: Any) -> ParticleImport:
    """The webhook integration a Particle webhook definition describes; ParticleDefinitionInvalid names each
    field it cannot take."""
    imported = read_definition(definition)
    if imported.problems:
        raise ParticleDefinitionInvalid(imported.problems)
    return imported


def read_definition(definition: Any) -> ParticleImport:
    """What of a definition converts, and each field that does not (`problems`), so the template's own checks can
    run on the rest and a user hears of every problem at once. Only a body that is no object is refused here."""
    if not isinstance(definition, dict):
        raise ParticleDefinitionInvalid([{"field": "(body)", "message": "must be a JSON object"}])
    read = _Conversion(definition)
    for name in definition:
        if name in EXPORT_ONLY:
            read.notes.append(f"{name}: left out (what Particle adds when it shows a webhook)")
        elif name not in FIELDS:
            read.refuse(name, "not a field of Particle webhook definitions that this import knows")
    _event_prefix(read)
    url = read.text("url")
    if "url" not in read.values:
        read.refuse("url", "is required: where the webhook sends requests")
    elif url is not None:
        read.put("url", _url_without_credentials(read, url), "url")
    method = read.values.get("requestType", "POST")
    if not isinstance(method, str) or method.upper() not in METHODS:
        read.refuse("requestType", "must be one of " + ", ".join(METHODS))
    else:
        read.put("method", method.upper(), "requestType")
    _headers(read, _body(read))
    _query(read)
    _auth(read)
    _responses(read)
    verify = read.flag("rejectUnauthorized")
    if verify is not None:
        read.put("tls_verify", verify, "rejectUnauthorized")
    _devices(read)
    # Without a name, one that tells the imported webhooks apart in a list: its event prefix and host.
    name = read.text("name") or _default_name(read)
    if len(name) > NAME_MAX_LENGTH:
        read.refuse("name", f"must be at most {NAME_MAX_LENGTH} characters")
    disabled = read.flag("disabled")
    # The create request's own fields, and problems on the configuration as a whole
    read.origins.update({"name": "name", "enabled": "disabled", "config": "(body)"})
    request = IntegrationCreate(
        template_id=TEMPLATE_ID,
        name=name if len(name) <= NAME_MAX_LENGTH else "",
        config=read.config,
        enabled=not disabled,
    )
    return ParticleImport(request=request, origins=read.origins, notes=read.notes, problems=read.problems)


def in_particle_terms(err: ValidationFailed, imported: ParticleImport) -> ParticleDefinitionInvalid:
    """What the integration service refused in a converted definition, each problem on its Particle field."""
    errors = []
    for problem in err.errors:
        ours = problem["field"]
        theirs = imported.origins.get(ours, ours)
        where = f" (webhook field {ours.removeprefix('config.')})" if ours.startswith("config.") else ""
        errors.append({"field": theirs, "message": problem["message"] + where})
    return ParticleDefinitionInvalid(errors)


def _event_prefix(read: _Conversion) -> None:
    """The event name prefix, from `event` or its alias `eventName`; Particle's events are named device events."""
    given = [name for name in ("event", "eventName") if name in read.values]
    if not given:
        read.refuse("event", "is required (or eventName): the prefix of the event names that trigger the webhook")
        return
    if len(given) == 2 and read.values["event"] != read.values["eventName"]:
        read.refuse("event", "differs from eventName, its alias: give one of them")
        read.refuse("eventName", "differs from event, its alias: give one of them")
        return
    source = given[0]
    prefix = read.text(source)
    if prefix is None:
        return
    if not EVENT_PREFIX.fullmatch(prefix):
        read.refuse(source, "must be 1-64 letters, digits, _, - and / (event names have no other characters)")
        return
    read.put("event_prefix", prefix, source)
    read.put("events", "publish", source)


def _body(read: _Conversion) -> str | None:
    """json, form or body (at most one) as the body format and template; returns the field used."""
    given = [name for name in BODY_FIELDS if name in read.values]
    if len(given) > 1:
        for name in given:
            others = " and ".join(other for other in given if other != name)
            read.refuse(name, f"only one of json, form and body may be given; this definition also has {others}")
        return None
    if not given:
        read.put("body_format", "none", "body")  # Particle's default form fields come from particle_defaults
        return None
    name = given[0]
    value = read.values[name]
    if name == "body":
        if not isinstance(value, str):
            read.refuse(name, "must be text (a template)")
            return None
        read.put("body_format", "raw", name)
        read.put("body", value, name)
        return name
    if not isinstance(value, dict):
        read.refuse(name, "must be an object (for a template that is not JSON, use body)")
        return None
    read.put("body_format", name, name)
    read.put("body", json.dumps(value, ensure_ascii=False), name)
    credentials = [key for key in value if _is_credential(str(key))]
    if credentials:  # a body is sent as written, and excerpts of it show in delivery events
        read.notes.append(
            f"{name} {', '.join(credentials)}: looks like a credential, sent in the body as written and shown in "
            "delivery excerpts; a header or query parameter of that name would be sealed"
        )
    return name


def _headers(read: _Conversion, body_source: str | None) -> None:
    """Headers split three ways: a raw body's Content-Type, credentials (sealed), and the rest."""
    headers = read.text_map("headers", "header")
    if not headers:
        return
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for name, value in headers.items():
        field_name = f"headers.{name}"
        if not HEADER_NAME.fullmatch(name):
            read.refuse(field_name, "is not a header name (letters, digits and !#$%&'*+.^_`|~- only)")
        elif name.lower() == "content-type" and body_source == "body":
            read.put("content_type", value, field_name)
            read.notes.append(f"{field_name}: the raw body's content type")
        elif _is_credential(name):
            secret[name] = value
            if name.lower() == "authorization" and "auth" in read.values:
                # the worker sends auth's Basic header over this one: one of them would be dropped unseen
                read.refuse(field_name, "auth sets the Authorization header too: give one of them")
                read.refuse("auth", f"{field_name} sets the Authorization header too: give one of them")
        else:
            plain[name] = value
    if plain:
        read.put("headers", plain, "headers")
    if secret:
        read.put("secret_headers", secret, "headers")
        read.notes.append(f"headers {', '.join(secret)}: kept as secret headers (sealed, write-only)")


def _is_credential(name: str) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower().replace("-", "_")
    return SECRET_NAME.search(words) is not None


def _url_without_credentials(read: _Conversion, url: str) -> str:
    """The URL with the credentials of its query string (`?api_key=…`, ThingSpeak's way) moved to the sealed
    query parameters."""
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    secret = {name: value for name, value in pairs if _is_credential(name)}
    if not secret or "{{" in parts.query:
        return url
    read.put("secret_query", {**read.config.get("secret_query", {}), **secret}, "url")
    read.notes.append(f"url ?{', '.join(secret)}: moved to secret query parameters (sealed, write-only)")
    kept = urlencode([(name, value) for name, value in pairs if name not in secret])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, kept, parts.fragment))


def _query(read: _Conversion) -> None:
    """Query parameters; those named like credentials (`api_key`, `token`) are sealed, as headers are."""
    query = read.text_map("query", "query parameter") or {}
    plain = {name: value for name, value in query.items() if not _is_credential(name)}
    secret = {name: value for name, value in query.items() if _is_credential(name)}
    if plain:
        read.put("query", plain, "query")
    if secret:
        read.put("secret_query", {**read.config.get("secret_query", {}), **secret}, "query")
        read.notes.append(f"query {', '.join(secret)}: kept as secret query parameters (sealed, write-only)")


def _auth(read: _Conversion) -> None:
    """Basic authentication: `auth.username` and `auth.password`."""
    auth = read.values.get("auth")
    if auth is None:
        return
    if not isinstance(auth, dict):
        read.refuse("auth", "must be an object with username and password")
        return
    for key in auth:
        if key not in AUTH_KEYS:
            read.refuse(f"auth.{key}", "not a field of auth (it has username and password)")
    username, password = auth.get("username"), auth.get("password", "")
    if not isinstance(username, str) or not username:
        read.refuse("auth.username", "is required, as text")
    else:
        read.put("auth_username", username, "auth.username")
    if not isinstance(password, str):
        read.refuse("auth.password", "must be text")
    elif password:
        read.put("auth_password", password, "auth.password")


def _responses(read: _Conversion) -> None:
    """What goes back to the device: the response template and topics, and Particle's default form fields."""
    template = read.text("responseTemplate")
    if template:
        read.put("response_template", template, "responseTemplate")
    read.put("response_topic", read.text("responseTopic") or DEFAULT_RESPONSE_TOPIC, "responseTopic")
    error_topic = read.text("errorResponseTopic") or DEFAULT_ERROR_RESPONSE_TOPIC
    read.put("error_response_topic", error_topic, "errorResponseTopic")
    read.put("particle_defaults", not read.flag("noDefaults"), "noDefaults")


def _default_name(read: _Conversion) -> str:
    prefix = read.config.get("event_prefix", "")
    host = urlsplit(str(read.config.get("url", ""))).hostname or ""
    name = f"Particle webhook: {prefix or 'every event'}" + (f" → {host}" if host and "{" not in host else "")
    return name[:NAME_MAX_LENGTH]


def _devices(read: _Conversion) -> None:
    """deviceID: one device's events only; mydevices: false asks for devices that are not the user's."""
    device = read.text("deviceID")
    if device is not None:
        if not re.fullmatch(ID_PATTERN, device):
            read.refuse(
                "deviceID",
                "must be one device id as registered here: 3 to 36 lowercase letters, digits and dashes (register "
                "devices under their Particle id, e.g. e00fce68…, so coreid and PARTICLE_DEVICE_ID stay the same)",
            )
        else:
            read.put("devices", device, "deviceID")
    if read.flag("mydevices") is False:
        read.refuse(
            "mydevices",
            "false selects public events of other people's devices, which do not exist here (every device of "
            "an application is its owner's): remove it or set it to true",
        )
