"""The Things Stack's webhook templates, converted: fields, RFC 6570 base URLs and paths, headers, secrets,
field masks, and exactly why a file is not imported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.templates import load_template, tts
from orchestrator.templates.values import check_values
from webhook_worker.config import WebhookSettings
from webhook_worker.render import build_context
from webhook_worker.request import RequestBuilder
from worker_sdk import Event

# TTS's own example template (lorawan-webhook-templates/example.yml), with a second message type.
EXAMPLE: dict[str, Any] = {
    "template-id": "example",
    "name": "Example Template",
    "description": "A simple webhook template",
    "logo-url": "https://upload.wikimedia.org/wikipedia/commons/3/30/Vector-based_example.svg",
    "info-url": "https://www.example.com",
    "documentation-url": "https://www.iana.org/domains/reserved",
    "fields": [
        {"id": "region", "name": "Server region", "description": "Where", "secret": False, "default-value": "eu"},
        {"id": "api-key", "name": "API Key", "description": "Authorization", "secret": True},
        {"id": "app", "name": "App", "optional": True},
    ],
    "format": "json",
    "headers": {"Authorization": "Bearer {api-key}", "X-App": "{app}"},
    "create-downlink-api-key": False,
    "base-url": "https://www.example.com{/region}",
    "paths": {"uplink-message": "/uplink{?app}", "join-accept": "/join", "uplink-normalized": "/normalized"},
    "field-mask": ["up.uplink_message.decoded_payload", "received_at"],
}


def test_a_template_becomes_fields_and_an_environment_as_tts_would_instantiate_it() -> None:
    imported = tts.convert(EXAMPLE)
    template = imported.template
    assert [(f.id, f.secret, f.required, f.default) for f in template.fields] == [
        ("region", False, False, "eu"),
        ("api_key", True, True, None),
        ("app", False, False, None),
    ]
    assert imported.notes == ["uplink-normalized is not produced here: its path is unused"]
    resolved, problems = check_values(template, {"api_key": "s3cr3t/key", "app": "my app"})
    assert problems == []
    env = resolved.environment
    assert env["WEBHOOK_URL"] == "https://www.example.com/eu"  # {/region}: RFC 6570 path segment
    assert json.loads(env["WEBHOOK_PATHS"]) == {"uplink": "/uplink?app=my%20app", "join.accept": "/join"}
    assert env["WEBHOOK_EVENTS"] == "uplink,join.accept"
    assert json.loads(env["WEBHOOK_HEADERS"]) == {"X-App": "my app"}
    assert json.loads(env["WEBHOOK_SECRET_HEADERS"]) == {"Authorization": "Bearer s3cr3t/key"}
    assert "WEBHOOK_SECRET_HEADERS" in resolved.secret_env and "WEBHOOK_HEADERS" not in resolved.secret_env
    assert "api_key" not in resolved.public

    # An empty optional field expands to nothing, as RFC 6570 says.
    resolved, _ = check_values(template, {"api_key": "k", "region": "us"})
    assert resolved.environment["WEBHOOK_URL"] == "https://www.example.com/us"
    assert json.loads(resolved.environment["WEBHOOK_PATHS"])["uplink"] == "/uplink"


def test_a_secret_in_the_url_is_sealed_and_masked() -> None:
    akenza = {
        "template-id": "akenza",
        "name": "akenza",
        "fields": [{"id": "uplink_secret", "name": "Uplink Secret", "secret": True}],
        "base-url": "https://data-gateway.akenza.io",
        "paths": {"uplink-message": "/v3/capture?secret={uplink_secret}"},
    }
    resolved, problems = check_values(tts.convert(akenza).template, {"uplink_secret": "abc def"})
    assert problems == []
    assert json.loads(resolved.environment["WEBHOOK_PATHS"]) == {"uplink": "/v3/capture?secret=abc%20def"}
    assert {"WEBHOOK_PATHS", "WEBHOOK_SECRET_VALUES"} <= set(resolved.secret_env)
    assert json.loads(resolved.environment["WEBHOOK_SECRET_VALUES"]) == ["abc def"]


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"format": "protobuf"}, tts.NotImportable, "format 'protobuf': only json is sent here"),
        ({"paths": {"uplink-normalized": "/n"}}, tts.NotImportable, "no message type this handler produces"),
        ({"paths": {"uplink-message": "/{nope}"}}, tts.NotImportable, "paths.uplink-message: {nope} names no field"),
        ({"headers": {"X": "{nope}"}}, tts.NotImportable, "headers.X: {nope} names no field"),
        ({"base-url": "ftp://x.example"}, tts.NotImportable, "is not an http(s) URL"),
        ({"template-id": "Bad_Id"}, tts.NotImportable, "is not an id here"),
        ({"paths": {"uplink": "/u"}}, tts.BrokenTemplate, "unknown message type 'uplink'"),
        ({"fields": "token"}, tts.BrokenTemplate, "fields must be a list"),
        ({"base-url": None}, tts.BrokenTemplate, "base-url is missing"),
    ],
)
def test_what_cannot_be_imported_says_exactly_why(change: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        tts.convert({**EXAMPLE, **change})


def test_the_written_template_loads_and_validates(tmp_path: Path) -> None:
    imported = tts.convert(EXAMPLE)
    path = tmp_path / "example.yaml"
    path.write_text(tts.to_yaml(imported, "example.yml"))
    loaded = load_template(path)
    assert loaded == imported.template
    assert "uplink-normalized is not produced here" in path.read_text()
    assert yaml.safe_load(path.read_text())["uri_environment"]["WEBHOOK_URL"] == "https://www.example.com{/region}"


def test_the_webhook_posts_each_message_type_to_its_path_with_the_field_mask() -> None:
    settings = WebhookSettings(
        url="https://www.example.com/eu",
        paths=json.dumps({"uplink": "/uplink", "join.accept": "/join"}),
        field_mask="up.uplink_message.decoded_payload,received_at",
    )
    builder = RequestBuilder(settings)
    ids = {"device_id": "dev-1", "application_ids": {"application_id": "app-1"}}
    uplink = {
        "end_device_ids": ids,
        "received_at": "2026-01-02T03:04:05Z",
        "uplink_message": {"f_port": 1, "decoded_payload": {"t": 1}},
    }
    request = builder.build(Event("uplink", "t", "app-1", "dev-1", uplink), {}, b"")
    assert request.url == "https://www.example.com/eu/uplink"
    assert json.loads(request.body or b"") == {
        "end_device_ids": ids,
        "received_at": "2026-01-02T03:04:05Z",
        "uplink_message": {"decoded_payload": {"t": 1}},
    }
    join = {"end_device_ids": ids, "join_accept": {"session_key_id": "AX"}}
    request = builder.build(Event("join.accept", "t", "app-1", "dev-1", join), {}, b"")
    assert request.url == "https://www.example.com/eu/join"
    assert json.loads(request.body or b"") == {"end_device_ids": ids}


def test_per_message_variables_in_paths_are_filled_for_each_message_and_joined_as_tts_joins() -> None:
    template = {
        "template-id": "per-device",
        "name": "Per device",
        "fields": [{"id": "key", "name": "Key", "secret": True}],
        "base-url": "https://api.example.com/v1/?token={key}",
        "paths": {"uplink-message": "/devices/{devID}{/devEUI}/up"},
        "logo-url": "../../.orchestrator/admin.token",  # a path would name a file on the orchestrator's machine
    }
    imported = tts.convert(template).template
    assert imported.logo is None
    resolved, problems = check_values(imported, {"key": "k 1"})
    assert problems == []
    assert resolved.environment["WEBHOOK_URL"] == "https://api.example.com/v1/?token=k%201"
    paths = json.loads(resolved.environment["WEBHOOK_PATHS"])
    assert paths == {"uplink": "/devices/{{device_id}}/{{dev_eui}}/up"}
    settings = WebhookSettings(url=resolved.environment["WEBHOOK_URL"], paths=json.dumps(paths))
    ids = {"device_id": "dev 1", "application_ids": {"application_id": "app-1"}, "dev_eui": "0004A30B001C0530"}
    event = Event("uplink", "t", "app-1", "dev 1", {"end_device_ids": ids})
    request = RequestBuilder(settings).build(event, build_context(event, "hook"), b"")
    assert request.url == "https://api.example.com/v1/devices/dev%201/0004A30B001C0530/up?token=k%201"


def test_two_fields_that_become_one_id_are_not_imported() -> None:
    fields = [{"id": "api-key", "name": "A"}, {"id": "api_key", "name": "B"}]
    with pytest.raises(tts.NotImportable, match="is 'api_key' here, as another field's is"):
        tts.convert({**EXAMPLE, "fields": fields, "headers": {}, "base-url": "https://x.example"})
