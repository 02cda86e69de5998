"""The platform presets render the requests those platforms document (no network: built and inspected)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator.config import PROJECT_ROOT
from orchestrator.templates import check_values, load_template
from webhook_worker.config import WebhookSettings
from webhook_worker.render import build_context
from webhook_worker.request import OutgoingRequest, RequestBuilder
from worker_sdk import Event

UPLINK = {
    "end_device_ids": {"device_id": "tank-7", "application_ids": {"application_id": "farm"}},
    "correlation_ids": ["up:1"],
    "received_at": "2026-01-02T03:04:05.5Z",
    "uplink_message": {"f_port": 1, "decoded_payload": {"field1": 3.5, "level": 80, "state": "full", "ok": True}},
}


def render(template_id: str, values: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> OutgoingRequest:
    template = load_template(PROJECT_ROOT / "integration_templates" / f"{template_id}.yaml")
    resolved, problems = check_values(template, values)
    assert problems == []
    for name, value in resolved.environment.items():
        monkeypatch.setenv(name, value)
    settings = WebhookSettings()  # type: ignore[call-arg]
    event = Event("uplink", "v3/farm/devices/tank-7/up", "farm", "tank-7", UPLINK)
    return RequestBuilder(settings).build(event, build_context(event, "x"), json.dumps(UPLINK).encode())


def test_influxdb_v2_line_protocol_write(monkeypatch: pytest.MonkeyPatch) -> None:
    request = render(
        "influxdb-v2",
        {"url": "https://influx.example:8086", "organization": "my org", "bucket": "sensors", "token": "tok=="},
        monkeypatch,
    )
    parts = urlsplit(request.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "influx.example:8086", "/api/v2/write")
    assert parse_qs(parts.query) == {"org": ["my org"], "bucket": ["sensors"], "precision": ["ns"]}
    assert request.headers["Authorization"] == "Token tok=="
    assert request.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert request.body == (
        b'uplink,application_id=farm,device_id=tank-7 field1=3.5,level=80,state="full",ok=true 1767323045500000000'
    )


def test_thingspeak_channel_update(monkeypatch: pytest.MonkeyPatch) -> None:
    request = render("thingspeak", {"write_api_key": "ABCDEFGHIJ012345"}, monkeypatch)
    assert request.method == "POST" and request.url == "https://api.thingspeak.com/update.json"
    assert request.headers["THINGSPEAKAPIKEY"] == "ABCDEFGHIJ012345"
    assert json.loads(request.body or b"") == {"created_at": "2026-01-02T03:04:05.5Z", "field1": 3.5}


def test_ubidots_device_values(monkeypatch: pytest.MonkeyPatch) -> None:
    request = render("ubidots", {"token": "BBFF-abc"}, monkeypatch)
    assert request.url == "https://industrial.api.ubidots.com/api/v1.6/devices/tank-7"
    assert request.headers["X-Auth-Token"] == "BBFF-abc" and "Authorization" not in request.headers
    assert json.loads(request.body or b"") == {"field1": 3.5, "level": 80, "state": "full", "ok": True}
