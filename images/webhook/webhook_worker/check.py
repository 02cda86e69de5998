"""The webhook's configuration, compiled and checked: what the worker does at start, and what the orchestrator
runs on a configuration before it accepts one (one code path, so validation equals what runs)."""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker_sdk import ConfigurationError
from worker_sdk.outbound import OutboundPolicy
from worker_sdk.settings import read_settings, settings_problems

from .config import WebhookSettings
from .render import Template, TemplateError
from .request import RequestBuilder

TOPIC_TEXT = re.compile(r"[A-Za-z0-9_\-/.:]+")


@dataclass
class Prepared:
    """Everything the worker compiles once from its settings."""

    builder: RequestBuilder
    response_template: Template
    response_topic: Template | None  # Particle's topics: None when the device gets no answer that way
    error_topic: Template | None
    ssl_context: ssl.SSLContext | bool


def prepare(settings: WebhookSettings, policy: OutboundPolicy) -> Prepared:
    """Compile every template and the TLS trust; ConfigurationError names the setting of each problem."""
    host = urlsplit(settings.url).hostname or ""
    refused = policy.refuses_host(host) if "{{" not in settings.url.split("//", 1)[-1].split("/", 1)[0] else None
    if refused is not None:
        raise ConfigurationError([f"WEBHOOK_URL: the outbound policy closes {host}: {refused}"])
    try:
        builder = RequestBuilder(settings, policy)
        response_template = Template(settings.response_template, "WEBHOOK_RESPONSE_TEMPLATE")
        response_topic = _topic(settings.response_topic, "WEBHOOK_RESPONSE_TOPIC")
        error_topic = _topic(settings.error_response_topic, "WEBHOOK_ERROR_RESPONSE_TOPIC")
    except TemplateError as err:
        raise ConfigurationError([str(err)]) from err
    return Prepared(builder, response_template, response_topic, error_topic, _ssl_context(settings))


def _topic(source: str, where: str) -> Template | None:
    if not source.strip():
        return None
    if not TOPIC_TEXT.fullmatch(re.sub(r"\{\{\{?.*?\}?\}\}", "x", source, flags=re.DOTALL)):
        raise TemplateError(f"{where}: a topic is letters, digits, _, -, /, . and : (and variables)")
    return Template(source, where)


def _ssl_context(settings: WebhookSettings) -> ssl.SSLContext | bool:
    """False: no checks; True: aiohttp's verified context (built at import, so no second ~40 ms here)."""
    if not settings.tls_verify or not (settings.ca_file or settings.ca_pem.strip()):
        return settings.tls_verify
    name = "WEBHOOK_CA_FILE" if settings.ca_file else "WEBHOOK_CA_PEM"
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
        if settings.ca_pem.strip():
            context.load_verify_locations(cadata=settings.ca_pem)
    except (OSError, ssl.SSLError, ValueError) as err:
        raise ConfigurationError([f"{name}: not a readable PEM certificate ({err})"]) from err
    return context


# Settings that moved to the SDK: a worker that ignored them would send every event, so they are refused.
RENAMED = {"WEBHOOK_EVENT_PREFIX": "WORKER_EVENT_PREFIX", "WEBHOOK_DEVICES": "WORKER_DEVICES"}


def renamed_settings(environment: Mapping[str, str]) -> list[tuple[str, str]]:
    """(old variable, why) for each renamed setting the environment still uses."""
    return [(old, f"renamed {new}: set that instead") for old, new in RENAMED.items() if environment.get(old)]


def check_environment(environment: Mapping[str, str]) -> list[tuple[str, str]]:
    """What the worker would refuse at start in this environment: (environment variable, why) for each problem."""
    problems = renamed_settings(environment) + settings_problems(WebhookSettings, environment)
    if problems:
        return problems
    try:
        prepare(read_settings(WebhookSettings, environment), OutboundPolicy.from_environment(environment))
    except ConfigurationError as err:
        found = []
        for problem in err.problems:
            where, _, message = problem.partition(": ")
            variable = where.split(".")[0].split("[")[0]
            inside = where[len(variable) :].lstrip(".")  # the header, key or item at fault within the variable
            found.append((variable, f"{inside}: {message}" if inside and message else message or problem))
        return found
    return []
