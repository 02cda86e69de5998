"""Particle webhook definitions converted into webhook integrations: every field mapped or refused by name, secrets
sealed, and the result sends what Particle sends."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from orchestrator.config import PROJECT_ROOT
from orchestrator.errors import ValidationFailed
from orchestrator.templates import load_template, particle
from orchestrator.templates.values import build_environment, check_values
from webhook_worker.config import WebhookSettings
from webhook_worker.render import build_context
from webhook_worker.request import RequestBuilder
from worker_sdk import Event
from worker_sdk.settings import read_settings

WEBHOOK = PROJECT_ROOT / "integration_templates" / "webhook.yaml"
# Particle's documented example (docs.particle.io: webhooks reference).
EXAMPLE: dict[str, Any] = {
    "eventName": "Metric",
    "url": "http://example.com",
    "headers": {"X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}"},
    "auth": {"username": "USERNAME", "password": "API_KEY"},
    "json": {"field1": "{{{indoorTemp}}}", "field2": "{{{outdoorTemp}}}", "created_at": "{{SPARK_PUBLISHED_AT}}"},
}
MINIMAL = {"event": "temp", "url": "https://example.com/in"}


def refusals(definition: Any) -> dict[str, str]:
    """Each refused field and why."""
    with pytest.raises(particle.ParticleDefinitionInvalid) as caught:
        particle.convert(definition)
    assert isinstance(caught.value, ValidationFailed)  # the API answers it as every 422
    return {problem["field"]: problem["message"] for problem in caught.value.errors}


def config_of(**definition: Any) -> dict[str, Any]:
    return particle.convert({**MINIMAL, **definition}).request.config


def test_particles_documented_example_maps_exactly() -> None:
    imported = particle.convert(EXAMPLE)
    assert imported.request.template_id == "webhook"
    assert imported.request.name == "Particle webhook: Metric → example.com" and imported.request.enabled is True
    assert imported.request.config == {
        "event_prefix": "Metric",
        "events": "publish",
        "url": "http://example.com",
        "method": "POST",
        "headers": {"X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}"},
        "auth_username": "USERNAME",
        "auth_password": "API_KEY",
        "body_format": "json",
        "body": '{"field1": "{{{indoorTemp}}}", "field2": "{{{outdoorTemp}}}", "created_at": "{{SPARK_PUBLISHED_AT}}"}',
        "response_topic": "{{PARTICLE_DEVICE_ID}}/hook-response/{{PARTICLE_EVENT_NAME}}",
        "error_response_topic": "{{PARTICLE_DEVICE_ID}}/hook-error/{{PARTICLE_EVENT_NAME}}",
        "particle_defaults": True,
    }
    assert particle.EXAMPLE == EXAMPLE  # the one the API documents


def test_the_example_sends_what_particle_sends() -> None:
    template = load_template(WEBHOOK)
    config = particle.convert(EXAMPLE).request.config
    # The worker's environment as the orchestrator builds it from the template's fields.
    environment, secret_env = build_environment(template, config)
    assert "WEBHOOK_AUTH_PASSWORD" in secret_env
    publish = {
        "name": "Metric/room1",
        "data": '{"indoorTemp": 21.5, "outdoorTemp": 3}',
        "published_at": "2026-01-02T03:04:05Z",
    }
    event = Event(
        "publish", "t", "app-1", "photon-1", {"end_device_ids": {"device_id": "photon-1"}, "publish": publish}
    )
    request = RequestBuilder(read_settings(WebhookSettings, environment)).build(event, build_context(event, "h"), b"")
    assert (request.method, request.url) == ("POST", "http://example.com")
    assert request.headers["X-Timestamp"] == "2026-01-02T03:04:05Z"
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"USERNAME:API_KEY").decode()
    assert request.headers["Content-Type"] == "application/json"
    body = json.loads(request.body or b"")
    # Particle's "include default data" (on unless noDefaults) puts its fields under the template's.
    defaults = {"event": "Metric/room1", "data": publish["data"], "published_at": publish["published_at"]}
    assert body == {
        **defaults,
        "coreid": "photon-1",
        "field1": 21.5,
        "field2": 3,
        "created_at": publish["published_at"],
    }


def test_the_converted_example_is_a_valid_webhook_configuration() -> None:
    # Needs particle_defaults, response_topic and error_response_topic in the webhook template.
    _, problems = check_values(load_template(WEBHOOK), particle.convert(EXAMPLE).request.config)
    assert problems == []


def test_unknown_fields_are_refused_each_by_name() -> None:
    found = refusals({**MINIMAL, "integration_type": "Webhook", "colour": "red", "nam": "x"})
    assert set(found) == {"colour", "nam"}  # what Particle adds to an export (integration_type) is left out
    assert "not a field" in found["colour"]


def test_an_export_imports_with_its_metadata_left_out_and_device_ids_checked() -> None:
    exported = {**MINIMAL, "id": "5f1a", "created_at": "2026-01-01T00:00:00Z", "integration_type": "Webhook"}
    imported = particle.convert(exported)
    assert "id: left out (what Particle adds when it shows a webhook)" in imported.notes
    assert particle.convert({**MINIMAL, "deviceID": "e00fce68a1b2c3d4e5f6a7b8"}).request.config["devices"] == (
        "e00fce68a1b2c3d4e5f6a7b8"
    )
    assert "register devices under their Particle id" in refusals({**MINIMAL, "deviceID": "My_Photon!"})["deviceID"]


def test_json_form_and_body_exclude_each_other() -> None:
    found = refusals({**MINIMAL, "json": {"a": "1"}, "form": {"b": "2"}})
    assert set(found) == {"json", "form"}
    assert "also has form" in found["json"] and "also has json" in found["form"]
    assert set(refusals({**MINIMAL, "json": {}, "form": {}, "body": "x"})) == {"json", "form", "body"}


def test_body_formats() -> None:
    assert config_of()["body_format"] == "none"
    form = config_of(form={"t": "{{{PARTICLE_EVENT_VALUE}}}"})
    assert (form["body_format"], json.loads(form["body"])) == ("form", {"t": "{{{PARTICLE_EVENT_VALUE}}}"})
    raw = config_of(body="t={{{PARTICLE_EVENT_VALUE}}}")
    assert (raw["body_format"], raw["body"]) == ("raw", "t={{{PARTICLE_EVENT_VALUE}}}")
    assert "content_type" not in raw
    assert "use body" in refusals({**MINIMAL, "json": "{{{PARTICLE_EVENT_VALUE}}}"})["json"]
    assert set(refusals({**MINIMAL, "body": {"a": 1}})) == {"body"}


def test_a_raw_bodys_content_type_header_becomes_its_content_type() -> None:
    imported = particle.convert(
        {**MINIMAL, "body": "{{{PARTICLE_EVENT_VALUE}}}", "headers": {"content-type": "text/csv"}}
    )
    assert imported.request.config["content_type"] == "text/csv"
    assert "headers" not in imported.request.config
    assert imported.origins["config.content_type"] == "headers.content-type"
    # With a JSON body the image sets application/json; a Content-Type header given anyway stays a header.
    assert config_of(json={}, headers={"Content-Type": "application/vnd.x+json"})["headers"] == {
        "Content-Type": "application/vnd.x+json"
    }


def test_headers_that_carry_credentials_are_sealed() -> None:
    headers = {
        "Authorization": "Bearer t0k",
        "X-Api-Key": "k3y",
        "x-auth-token": "abc",
        "X-Client-Secret": "s",
        "X-Password": "p",
        "X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}",
    }
    imported = particle.convert({**MINIMAL, "headers": headers})
    config = imported.request.config
    assert config["headers"] == {"X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}"}
    assert set(config["secret_headers"]) == {
        "Authorization",
        "X-Api-Key",
        "x-auth-token",
        "X-Client-Secret",
        "X-Password",
    }
    assert imported.origins["config.secret_headers"] == "headers"
    notes = " ".join(imported.notes)
    assert "X-Api-Key" in notes and "t0k" not in notes and "k3y" not in notes  # notes name headers, not values
    secret_ids = load_template(WEBHOOK).secret_field_ids
    assert {"secret_headers", "auth_password"} <= secret_ids


def test_an_authorization_header_and_auth_are_refused_together() -> None:
    found = refusals({**MINIMAL, "headers": {"Authorization": "Bearer x"}, "auth": {"username": "u"}})
    assert set(found) == {"headers.Authorization", "auth"}


def test_event_and_its_alias() -> None:
    assert config_of(event="temp", eventName="temp")["event_prefix"] == "temp"
    assert config_of()["events"] == "publish"
    found = refusals({**MINIMAL, "eventName": "hum"})
    assert set(found) == {"event", "eventName"}
    assert "eventName" in found["event"] and "event" in found["eventName"]
    assert "required" in refusals({"url": "https://example.com"})["event"]
    assert set(refusals({**MINIMAL, "event": "has space"})) == {"event"}
    assert set(refusals({**MINIMAL, "event": "x" * 65})) == {"event"}


def test_every_other_field() -> None:
    config = config_of(
        requestType="put",
        query={"k": "{{PARTICLE_DEVICE_ID}}"},
        responseTemplate="{{result}}",
        responseTopic="{{PARTICLE_DEVICE_ID}}/answer",
        errorResponseTopic="{{PARTICLE_DEVICE_ID}}/oops",
        noDefaults=True,
        rejectUnauthorized=False,
        deviceID="0123456789abcdef01234567",
        mydevices=True,
    )
    assert config["method"] == "PUT" and config["query"] == {"k": "{{PARTICLE_DEVICE_ID}}"}
    assert config["response_template"] == "{{result}}"
    assert config["response_topic"] == "{{PARTICLE_DEVICE_ID}}/answer"
    assert config["error_response_topic"] == "{{PARTICLE_DEVICE_ID}}/oops"
    assert config["particle_defaults"] is False and config["tls_verify"] is False
    assert config["devices"] == "0123456789abcdef01234567"
    assert config_of(rejectUnauthorized=True)["tls_verify"] is True
    assert "tls_verify" not in config_of()


def test_query_parameters_named_like_credentials_are_sealed() -> None:
    """ThingSpeak-style `api_key` in the query, or in the URL's own query string, is a secret: write-only,
    masked, never in plain config; words that merely hold one (author) are not."""
    config = config_of(query={"api_key": "K3Y", "author": "me", "field1": "{{{PARTICLE_EVENT_VALUE}}}"})
    assert config["query"] == {"author": "me", "field1": "{{{PARTICLE_EVENT_VALUE}}}"}
    assert config["secret_query"] == {"api_key": "K3Y"}
    imported = particle.convert(
        {**MINIMAL, "url": "https://api.thingspeak.com/update?api_key=W1&x=1", "form": {"apiKey": "W1"}}
    )
    assert imported.request.config["url"] == "https://api.thingspeak.com/update?x=1"
    assert imported.request.config["secret_query"] == {"api_key": "W1"}
    assert any(note.startswith("form apiKey: looks like a credential") for note in imported.notes)


def test_name_and_disabled_go_to_the_integration() -> None:
    request = particle.convert({**MINIMAL, "name": "Greenhouse metrics", "disabled": True}).request
    assert (request.name, request.enabled) == ("Greenhouse metrics", False)
    assert set(refusals({**MINIMAL, "name": "x" * 201})) == {"name"}


def test_mydevices_false_is_refused_with_why() -> None:
    assert "other people's devices" in refusals({**MINIMAL, "mydevices": False})["mydevices"]


@pytest.mark.parametrize(
    ("definition", "fields"),
    [
        ({"headers": ["X-A"]}, {"headers"}),
        ({"headers": {"X-A": 1, "X-B": "ok", "X-C": None}}, {"headers.X-A", "headers.X-C"}),
        ({"headers": {" ": "x"}}, {"headers"}),
        ({"headers": {"X Api": "x", "X-Ok": "y"}}, {"headers.X Api"}),
        ({"query": {"n": 10}}, {"query.n"}),
        ({"requestType": "FETCH"}, {"requestType"}),
        ({"requestType": "PATCH"}, {"requestType"}),  # Particle has no PATCH
        ({"requestType": 1}, {"requestType"}),
        ({"noDefaults": "yes", "rejectUnauthorized": 0, "mydevices": "true", "disabled": 1}, None),
        ({"auth": "user:pass"}, {"auth"}),
        ({"auth": {"username": "u", "password": 1, "realm": "r"}}, {"auth.password", "auth.realm"}),
        ({"auth": {"password": "p"}}, {"auth.username"}),
        ({"url": 5}, {"url"}),
        ({"url": None}, {"url"}),
        ({"deviceID": "a,b"}, {"deviceID"}),
        ({"deviceID": ""}, {"deviceID"}),
        ({"responseTopic": 1, "errorResponseTopic": [], "responseTemplate": {}}, None),
        ({"name": 7}, {"name"}),
    ],
)
def test_values_of_the_wrong_type_are_refused_naming_the_field(
    definition: dict[str, Any], fields: set[str] | None
) -> None:
    expected = fields if fields is not None else set(definition)
    assert set(refusals({**MINIMAL, **definition})) == expected


def test_null_is_not_set() -> None:
    assert config_of(json=None, form={"a": "1"}, deviceID=None)["body_format"] == "form"


def test_a_definition_must_be_an_object() -> None:
    assert refusals([MINIMAL]) == {"(body)": "must be a JSON object"}


def test_the_services_problems_are_said_on_particle_fields() -> None:
    imported = particle.convert({**EXAMPLE, "name": "n", "disabled": True})
    service = ValidationFailed(
        [
            {"field": "config.url", "message": "URL does not match the pattern https?://.*"},
            {"field": "config.auth_password", "message": "Basic auth password must not contain a NUL character"},
            {"field": "config.event_prefix", "message": "x"},
            {"field": "config", "message": "y"},
            {"field": "name", "message": "z"},
            {"field": "replicas", "message": "w"},
        ]
    )
    found = particle.in_particle_terms(service, imported).errors
    assert [problem["field"] for problem in found] == [
        "url",
        "auth.password",
        "eventName",
        "(body)",
        "name",
        "replicas",
    ]
    assert found[0]["message"] == "URL does not match the pattern https?://.* (webhook field url)"


def test_the_documented_schema_names_every_field_the_converter_takes() -> None:
    schema = particle.DEFINITION_SCHEMA
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {
        "event",
        "eventName",
        "url",
        "requestType",
        "headers",
        "query",
        "json",
        "form",
        "body",
        "auth",
        "responseTemplate",
        "responseTopic",
        "errorResponseTopic",
        "noDefaults",
        "rejectUnauthorized",
        "deviceID",
        "mydevices",
        "name",
        "disabled",
    }
