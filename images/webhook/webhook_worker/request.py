"""Turn an event into an HTTP request, and an HTTP response into downlinks (pure functions)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from worker_sdk import Event
from worker_sdk.messages import Downlink, describe_errors
from worker_sdk.outbound import OutboundPolicy
from worker_sdk.topics import selected_events

from .config import WebhookSettings, split_names
from .render import (
    JsonTemplate,
    Template,
    TemplateError,
    html_template,
    js_text,
    parse_json_setting,
    url_template,
)

USER_AGENT = "iot-orchestrator-webhook/0.1"


@dataclass
class OutgoingRequest:
    """A fully rendered HTTP request."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    secrets: list[str] = field(default_factory=list)  # the rendered values of secret headers


class InvalidRequest(ValueError):
    """A rendered request cannot be sent as it is (a URL that is not HTTP, a header with a line break): sending it
    again would not help."""


def _template_map(text: str, where: str) -> dict[str, Template]:
    value = parse_json_setting(text, where)
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise TemplateError(f"{where}: must be a JSON object of strings")
    return {name: Template(item, f"{where}.{name}") for name, item in value.items()}


def _secret_templates(text: str, where: str, line_breaks_refused: bool) -> dict[str, Template]:
    """Templates whose values are secret (headers, query parameters); a problem names the entry, never its value
    (errors are shown and logged)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        raise TemplateError(f"{where}: not a JSON object") from None
    if not isinstance(value, dict) or not all(isinstance(item, str) for item in value.values()):
        raise TemplateError(f"{where}: must be a JSON object of strings")
    templates = {}
    for name, source in value.items():
        if line_breaks_refused and ("\r" in name + source or "\n" in name + source):
            raise TemplateError(f"{where}.{name}: a header cannot hold a line break")
        try:
            templates[name] = Template(source, f"{where}.{name}")
        except TemplateError:
            raise TemplateError(f"{where}.{name}: invalid Mustache/Handlebars template") from None
    return templates


class RequestBuilder:
    """The webhook's templates, compiled once, rendering one request per event."""

    def __init__(self, settings: WebhookSettings, policy: OutboundPolicy | None = None) -> None:
        self.policy = policy or OutboundPolicy.build()
        self.method = settings.method
        self.body_format = settings.body_format
        self.url = url_template(settings.url, "WEBHOOK_URL")
        self.headers = _template_map(settings.headers, "WEBHOOK_HEADERS")
        for name, template in self.headers.items():
            if "\r" in name + template.source or "\n" in name + template.source:
                raise TemplateError(f"WEBHOOK_HEADERS.{name}: a header cannot hold a line break")
        self.secret_headers = _secret_templates(
            settings.secret_headers.get_secret_value(), "WEBHOOK_SECRET_HEADERS", line_breaks_refused=True
        )
        self.query = _template_map(settings.query, "WEBHOOK_QUERY")
        self.secret_query = _secret_templates(
            settings.secret_query.get_secret_value(), "WEBHOOK_SECRET_QUERY", line_breaks_refused=False
        )
        self.paths = {
            name: url_template(t.source, f"WEBHOOK_PATHS.{name}")
            for name, t in _template_map(settings.paths, "WEBHOOK_PATHS").items()
        }
        if self.paths:
            try:
                selected_events(",".join(self.paths))
            except ValueError as err:
                raise TemplateError(f"WEBHOOK_PATHS: {err}") from None
        self.field_mask = [mask_path(item) for item in split_names(settings.field_mask)]
        self.body_json: JsonTemplate | None = None
        self.body_raw: Template | None = None
        if settings.body_format in ("json", "form"):
            value = parse_json_setting(settings.body or "{}", "WEBHOOK_BODY")
            if settings.body_format == "form" and not isinstance(value, dict):
                raise TemplateError("WEBHOOK_BODY: a form body must be a JSON object")
            self.body_json = JsonTemplate(value, "WEBHOOK_BODY")
        elif settings.body_format == "raw":
            self.body_raw = html_template(settings.body, "WEBHOOK_BODY")
        self.content_type = {
            "message": "application/json",
            "json": "application/json",
            "form": "application/x-www-form-urlencoded",
            "raw": settings.content_type,
        }.get(settings.body_format)
        # Particle's default fields go in the query of a GET or DELETE, else in the body: the whole form body when
        # there is none, or under a form's or a JSON object's own fields.
        self.particle_defaults = settings.particle_defaults
        self.defaults_in_query = settings.particle_defaults and settings.method in ("GET", "DELETE")
        if settings.particle_defaults and not self.defaults_in_query and settings.body_format == "none":
            self.content_type = "application/x-www-form-urlencoded"
        self.downlink: tuple[str, str] | None = None  # (key, URL) the target pushes downlinks back with
        self.auth_header: tuple[str, str] | None = None
        token = settings.auth_token.get_secret_value()
        if settings.auth_username:
            pair = f"{settings.auth_username}:{settings.auth_password.get_secret_value()}"
            self.auth_header = ("Authorization", "Basic " + base64.b64encode(pair.encode()).decode())
        elif token:
            self.auth_header = (settings.auth_header, f"{settings.auth_scheme} {token}".strip())

    @property
    def needs_context(self) -> bool:
        """False when nothing is templated: the event is then forwarded without building variables."""
        templates = [self.url, *self.paths.values(), *self.headers.values(), *self.query.values()]
        templates += [*self.secret_headers.values(), *self.secret_query.values()]
        templated = any(not t.constant for t in templates) or self.particle_defaults
        return templated or self.body_json is not None or self.body_raw is not None

    def build(self, event: Event, context: dict[str, Any], raw_message: bytes) -> OutgoingRequest:
        """Render the request for one event."""
        url = self.url.render(context)
        if event.name in self.paths:
            url = join_path(url, self.paths[event.name].render(context))
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise InvalidRequest(f"the rendered URL {url[:200]!r} is not an http(s) URL with a host")
        refused = self.policy.refuses_host(parts.hostname)
        if refused is not None:
            raise InvalidRequest(f"the outbound policy closes {parts.hostname}: {refused}")
        params = {name: template.render(context) for name, template in self.query.items()}
        if self.defaults_in_query:
            params = {**default_fields(context), **params}
        secrets = []
        for name, template in self.secret_query.items():
            params[name] = template.render(context)
            secrets.append(params[name])
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        headers = {"User-Agent": USER_AGENT}
        if self.content_type:
            headers["Content-Type"] = self.content_type
        for name, template in self.headers.items():
            value = template.render(context)
            if "\r" in value or "\n" in value:
                raise InvalidRequest(f"header {name} would contain a line break")
            headers[name] = value
        for name, template in self.secret_headers.items():
            value = template.render(context)
            if "\r" in value or "\n" in value:
                raise InvalidRequest(f"secret header {name} would contain a line break")
            headers[name] = value
            secrets.append(value)
        if self.auth_header:
            headers[self.auth_header[0]] = self.auth_header[1]
            secrets.append(self.auth_header[1])  # a target that echoes it must not show it to the device
        if self.downlink:  # as The Things Stack adds them when a webhook has a downlink key
            key, device_url = self.downlink[0], self.downlink[1].replace("{device_id}", quote(event.device_id, safe=""))
            headers.update(
                {
                    "X-Downlink-Apikey": key,
                    "X-Downlink-Push": f"{device_url}/push",
                    "X-Downlink-Replace": f"{device_url}/replace",
                }
            )
            secrets.append(key)
        return OutgoingRequest(self.method, url, headers, self._body(event, context, raw_message), secrets)

    def _body(self, event: Event, context: dict[str, Any], raw_message: bytes) -> bytes | None:
        if self.body_format == "message":
            if self.field_mask:
                return json.dumps(masked(event.payload, self.field_mask), separators=(",", ":")).encode()
            return raw_message
        if self.body_json is not None:
            value = self.body_json.render(context)
            if self.particle_defaults and not self.defaults_in_query and isinstance(value, dict):
                value = {**default_fields(context), **value}  # Particle's "include default data": its own keys win
            if self.body_format == "form":
                return urlencode({key: _form_value(item) for key, item in value.items()}).encode()
            return json.dumps(value, separators=(",", ":")).encode()
        if self.body_raw is not None:
            return self.body_raw.render(context).encode()
        if self.particle_defaults and not self.defaults_in_query:
            return urlencode(default_fields(context)).encode()
        return None


def default_fields(context: dict[str, Any]) -> dict[str, str]:
    """The fields Particle sends unless a webhook says noDefaults: event, data, published_at, coreid."""
    return {
        "event": context["PARTICLE_EVENT_NAME"],
        "data": context["PARTICLE_EVENT_VALUE"],
        "published_at": context["PARTICLE_PUBLISHED_AT"],
        "coreid": context["PARTICLE_DEVICE_ID"],
    }


def join_path(base: str, path: str) -> str:
    """A message type's path added to the base URL as The Things Stack adds it: one slash between the two,
    and the queries of both kept (`https://x.io/api?k=1` + `/up?v=2` -> `https://x.io/api/up?k=1&v=2`)."""
    if not path:
        return base
    base_parts, path_parts = urlsplit(base), urlsplit(path)
    joined = base_parts.path.rstrip("/") + "/" + path_parts.path.lstrip("/")
    query = "&".join(part for part in (base_parts.query, path_parts.query) if part)
    return urlunsplit((base_parts.scheme, base_parts.netloc, joined, query, base_parts.fragment))


def mask_path(text: str) -> list[str]:
    """A field mask path as keys; The Things Stack's `up.` (its message's one-of) is dropped."""
    return text.removeprefix("up.").split(".")


def masked(message: dict[str, Any], paths: list[list[str]]) -> dict[str, Any]:
    """Only the parts of the message the paths name (and `end_device_ids`, which says whose it is)."""
    kept: dict[str, Any] = {}
    for path in [["end_device_ids"], *paths]:
        value: Any = message
        for key in path:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        if value is _MISSING:
            continue
        target = kept
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value
    return kept


_MISSING = object()


def _form_value(value: Any) -> str:
    """A form field, as JavaScript prints the value (null: empty; arrays joined with commas; objects as JSON)."""
    return js_text(value)


def response_downlinks(rendered: str, f_port: int, confirmed: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Downlinks from a rendered response template, and the problems that made any of them invalid.

    JSON with `downlinks` (The Things Stack form) or with `frm_payload`/`decoded_payload` is used as is;
    any other text becomes the downlink's bytes.
    """
    text = rendered.strip()
    if not text:
        return [], []
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = None
    if isinstance(value, dict) and isinstance(value.get("downlinks"), list):
        items = value["downlinks"]
    elif isinstance(value, dict) and ("frm_payload" in value or "decoded_payload" in value):
        items = [value]
    else:
        items = [{"frm_payload": base64.b64encode(text.encode()).decode()}]
    downlinks, problems = [], []
    for index, item in enumerate(items):
        candidate = {"f_port": f_port, "confirmed": confirmed, **item} if isinstance(item, dict) else item
        try:
            downlinks.append(Downlink.model_validate(candidate).model_dump(exclude_none=True))
        except ValidationError as err:
            problems += [f"{p['field']}: {p['message']}" for p in describe_errors(err, f"downlinks.{index}")]
    return downlinks, problems
