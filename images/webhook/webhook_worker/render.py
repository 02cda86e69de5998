"""Mustache/Handlebars templates for requests: per-context escaping, typed JSON values, template variables."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from html import escape as html_escape
from typing import Any
from urllib.parse import quote

from worker_sdk import Event

from .handlebars import Compiled, HandlebarsError

# A JSON leaf that is a single tag, like "{{decoded_payload.temperature}}", keeps the value's JSON type.
# Variables a named event's data cannot replace: identity, time, and the registry's word on the device.
PROTECTED = frozenset(
    {
        "application_id",
        "device_id",
        "integration_id",
        "dev_eui",
        "join_eui",
        "dev_addr",
        "device",
        "correlation_id",
        "correlation_ids",
        "received_at",
        "received_at_unix",
        "received_at_unix_ms",
        "received_at_unix_ns",
    }
)
SINGLE_TAG = re.compile(r"^\s*\{\{\{?\s*([\w.\-]+)\s*\}?\}\}\s*$")


class TemplateError(ValueError):
    """A template does not parse; the message names where."""


def lookup(context: dict[str, Any], path: str) -> Any:
    """Resolve a dotted path (`a.b.0.c`) in the context; None when any step is missing."""
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
        if value is None:
            return None
    return value


def _unix(received_at: str) -> float | None:
    try:
        return datetime.fromisoformat(received_at.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def build_context(event: Event, integration_id: str) -> dict[str, Any]:
    """Every variable a template can use for one event (documented in docs/webhook.md)."""
    payload = event.payload
    ids = payload.get("end_device_ids") or {}
    uplink = payload.get("uplink_message") or {}
    decoded = uplink.get("decoded_payload") or {}
    frm_payload = uplink.get("frm_payload") or ""
    try:
        payload_hex = base64.b64decode(frm_payload).hex() if frm_payload else ""
    except (binascii.Error, ValueError):
        payload_hex = ""
    fields = list(decoded.items()) if isinstance(decoded, dict) else []
    received_at = event.received_at
    unix = _unix(received_at) if received_at else None
    device = event.device
    context = {
        "event": event.name,
        "integration_id": integration_id,
        "application_id": event.application_id,
        "device_id": event.device_id,
        "dev_eui": ids.get("dev_eui", ""),
        "dev_addr": ids.get("dev_addr", ""),
        "join_eui": ids.get("join_eui", ""),
        "correlation_id": (event.correlation_ids or [""])[0],
        "correlation_ids": event.correlation_ids,
        "received_at": received_at,
        "received_at_unix": int(unix) if unix is not None else "",
        "received_at_unix_ms": int(unix * 1000) if unix is not None else "",
        "received_at_unix_ns": int(unix * 1_000_000) * 1000 if unix is not None else "",
        "f_port": uplink.get("f_port", ""),
        "f_cnt": uplink.get("f_cnt", ""),
        "frm_payload": frm_payload,
        "payload_hex": payload_hex,
        "decoded_payload": decoded,
        "decoded_fields": [
            {
                "key": key,
                "value": value,
                "is_string": isinstance(value, str),
                "is_number": isinstance(value, int | float) and not isinstance(value, bool),
                "is_bool": isinstance(value, bool),
                "last": index == len(fields) - 1,
            }
            for index, (key, value) in enumerate(fields)
        ],
        "device": {
            "name": device.name if device else "",
            "attributes": dict(device.attributes) if device else {},
        },
        "message": payload,
    }
    context |= particle_variables(event, context)
    return context


def particle_variables(event: Event, context: dict[str, Any]) -> dict[str, Any]:
    """Particle's webhook variables (and their legacy SPARK_ names), so its definitions render as they do there.
    A named event (`publish`) gives its name and data; any other event its own name, and the decoded payload
    (as JSON) or the raw payload as its value. Keys of data that is a JSON object become variables too, as on
    Particle, and win over ours of the same name."""
    publish = event.payload.get("publish") if event.name == "publish" else None
    if isinstance(publish, dict):
        name, value = event.event_name, str(publish.get("data", ""))
        published_at = str(publish.get("published_at") or context["received_at"] or "")
    else:
        decoded = context["decoded_payload"]
        name, value = event.name, js_text(decoded) if decoded else str(context["frm_payload"])
        published_at = str(context["received_at"] or "")
    found = {
        "event_name": name,
        "event_data": value,
        "PARTICLE_DEVICE_ID": event.device_id,
        "PARTICLE_EVENT_NAME": name,
        "PARTICLE_EVENT_VALUE": value,
        "PARTICLE_PUBLISHED_AT": published_at,
        "PARTICLE_EVENT_ID": context["correlation_id"],
        "PRODUCT_ID": event.application_id,
        "SPARK_CORE_ID": event.device_id,
        "SPARK_EVENT_NAME": name,
        "SPARK_EVENT_VALUE": value,
        "SPARK_PUBLISHED_AT": published_at,
    }
    if isinstance(publish, dict):
        try:
            data = json.loads(value)
        except ValueError:
            data = None
        if isinstance(data, dict):
            # As on Particle, where a definition's other names all come from the data, they win over ours
            # (`event`, `message`, ...); never over Particle's own, nor over who sent it and what the registry
            # says of the device: a device must not pass for another.
            found |= {key: item for key, item in data.items() if key not in found and key not in PROTECTED}
    return found


def js_text(value: Any) -> str:
    """A value as JavaScript renderers (Particle's, Handlebars) print it: true/false, null as nothing, 21.0 as
    21, arrays joined with commas; objects, which JavaScript would print as [object Object], as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _js_number(value)
    if isinstance(value, list | tuple):
        return ",".join(js_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(_js_json(value), separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _js_json(value: Any) -> Any:
    """JSON data with whole floats as integers, as JSON.stringify writes them (21.0 -> 21)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {key: _js_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_js_json(item) for item in value]
    return value


def _js_number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text and 1e-6 <= abs(value) < 1e21:  # JavaScript writes 0.00001 where Python writes 1e-05
        return format(Decimal(text), "f")
    if "e" in text:  # 1e-07 -> 1e-7, 1e+21 as JavaScript writes exponents
        mantissa, exponent = text.split("e")
        power = int(exponent)
        return f"{mantissa}e{'+' if power > 0 else '-'}{abs(power)}"
    return text


def _no_escape(text: str) -> str:
    return text


def _url_escape(text: str) -> str:
    return quote(text, safe="")


class Template:
    """One Mustache/Handlebars template, parsed once; `{{x}}` escapes for its context, `{{{x}}}` never does;
    values print as JavaScript prints them (js_text)."""

    def __init__(self, source: str, where: str, escape: Callable[[str], str] = _no_escape) -> None:
        self.source = source
        self.constant = "{{" not in source
        self._escape = escape
        self._compiled: Compiled | None = None
        if not self.constant:
            try:
                self._compiled = Compiled(source)
            except HandlebarsError as err:
                raise TemplateError(f"{where}: invalid Mustache/Handlebars template: {err}") from err

    def render(self, context: dict[str, Any]) -> str:
        """Render with the given variables (missing ones render empty)."""
        if self._compiled is None:
            return self.source
        return self._compiled.render(context, self._escape, js_text)


def url_template(source: str, where: str) -> Template:
    """A template whose `{{x}}` values are percent-encoded (safe in a URL path or query)."""
    return Template(source, where, _url_escape)


def html_template(source: str, where: str) -> Template:
    """A template with standard Mustache escaping (`{{x}}` HTML-escaped), for raw bodies."""
    return Template(source, where, lambda text: html_escape(text, quote=True))


_OMIT = object()


class JsonTemplate:
    """A JSON value whose string leaves are templates; a leaf that is one tag keeps the value's type."""

    def __init__(self, value: Any, where: str) -> None:
        self._compiled = self._compile(value, where)

    def _compile(self, value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {key: self._compile(item, f"{where}.{key}") for key, item in value.items()}
        if isinstance(value, list):
            return [self._compile(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, str):
            single = SINGLE_TAG.match(value)
            return ("tag", single.group(1)) if single else ("text", Template(value, where))
        return ("value", value)

    def render(self, context: dict[str, Any]) -> Any:
        """The rendered JSON value (dicts, lists, strings, numbers)."""
        return self._render(self._compiled, context)

    def _render(self, node: Any, context: dict[str, Any]) -> Any:
        if isinstance(node, dict):
            rendered = {key: self._render(item, context) for key, item in node.items()}
            return {key: item for key, item in rendered.items() if item is not _OMIT}
        if isinstance(node, list):
            return [None if item is _OMIT else item for item in (self._render(element, context) for element in node)]
        kind, content = node
        if kind == "tag":
            value = lookup(context, content)
            return _OMIT if value is None else value
        if kind == "text":
            return content.render(context)
        return content


def parse_json_setting(text: str, where: str) -> Any:
    """Parse a JSON-valued setting, naming the setting when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError as err:
        raise TemplateError(f"{where}: not valid JSON: {err}") from err
