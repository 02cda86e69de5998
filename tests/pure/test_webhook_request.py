"""The webhook's templates: variables, escaping per context, typed JSON, auth, and response downlinks."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from webhook_worker.config import WebhookSettings
from webhook_worker.render import JsonTemplate, TemplateError, build_context, js_text, lookup
from webhook_worker.request import InvalidRequest, RequestBuilder, response_downlinks
from webhook_worker.worker import retry_after_seconds
from worker_sdk import Device, Event

UPLINK: dict[str, Any] = {
    "end_device_ids": {
        "device_id": "dev-1",
        "application_ids": {"application_id": "app-1"},
        "dev_eui": "0004A30B001C0530",
    },
    "correlation_ids": ["up:abc", "x:1"],
    "received_at": "2026-01-02T03:04:05.123456Z",
    "uplink_message": {
        "f_port": 2,
        "f_cnt": 7,
        "frm_payload": base64.b64encode(b"\x01\x02").decode(),
        "decoded_payload": {"temperature": 21.5, "label": "a&b <c>", "ok": True, "levels": [3, 4]},
        "rx_metadata": [{"gateway_ids": {"gateway_id": "gw"}, "rssi": -42}],
    },
}


def event() -> Event:
    device = Device("dev-1", name="Boiler", attributes={"site": "north wing"})
    return Event("uplink", "v3/app-1/devices/dev-1/up", "app-1", "dev-1", UPLINK, device)


def build(**settings: Any) -> tuple[RequestBuilder, Any]:
    config = WebhookSettings(**settings)
    builder = RequestBuilder(config)
    context = build_context(event(), "hook")
    raw = json.dumps(UPLINK).encode()
    return builder, builder.build(event(), context, raw)


def test_variables_cover_ids_times_payload_and_device() -> None:
    context = build_context(event(), "hook")
    assert lookup(context, "device_id") == "dev-1"
    assert lookup(context, "application_id") == "app-1"
    assert lookup(context, "dev_eui") == "0004A30B001C0530"
    assert lookup(context, "correlation_id") == "up:abc"
    assert lookup(context, "received_at_unix") == 1767323045
    assert lookup(context, "received_at_unix_ms") == 1767323045123
    assert lookup(context, "payload_hex") == "0102"
    assert lookup(context, "decoded_payload.temperature") == 21.5
    assert lookup(context, "message.uplink_message.rx_metadata.0.rssi") == -42
    assert lookup(context, "device.attributes.site") == "north wing"


def test_url_values_are_percent_encoded_unless_triple_braced() -> None:
    _, request = build(
        url="https://x.example/{{device.attributes.site}}/{{{device.attributes.site}}}?c={{correlation_id}}"
    )
    assert request.url == "https://x.example/north%20wing/north wing?c=up%3Aabc"


def test_default_body_is_the_message_as_received() -> None:
    _, request = build(url="https://x.example")
    assert request.method == "POST"
    assert json.loads(request.body) == UPLINK
    assert request.headers["Content-Type"] == "application/json"


def test_json_body_keeps_types_of_single_tags_and_drops_missing_keys() -> None:
    body = {
        "t": "{{decoded_payload.temperature}}",
        "ok": "{{{decoded_payload.ok}}}",
        "gone": "{{nothing}}",
        "text": "T={{decoded_payload.temperature}} {{decoded_payload.label}}",
        "all": "{{decoded_payload}}",
        "list": ["{{decoded_payload.levels.1}}", 5],
    }
    _, request = build(url="https://x.example", body_format="json", body=json.dumps(body))
    sent = json.loads(request.body)
    assert sent["t"] == 21.5 and sent["ok"] is True and "gone" not in sent
    assert sent["text"] == "T=21.5 a&b <c>"  # JSON leaves are not HTML-escaped: json.dumps escapes
    assert sent["all"]["levels"] == [3, 4]
    assert sent["list"] == [4, 5]


def test_raw_body_uses_mustache_escaping_and_triple_braces_for_raw() -> None:
    _, request = build(
        url="https://x.example",
        body_format="raw",
        content_type="text/csv",
        body="{{decoded_payload.label}};{{{decoded_payload.label}}}",
    )
    assert request.body == b"a&amp;b &lt;c&gt;;a&b <c>"
    assert request.headers["Content-Type"] == "text/csv"


def test_form_body_and_query_and_headers() -> None:
    _, request = build(
        url="https://x.example/p?a=1",
        method="PUT",
        body_format="form",
        body='{"dev": "{{device_id}}", "n": "{{f_cnt}}"}',
        query='{"site": "{{device.attributes.site}}"}',
        headers='{"X-Device": "{{device_id}}", "X-Fixed": "yes"}',
    )
    assert request.method == "PUT"
    query = parse_qs(urlsplit(request.url).query)
    assert query == {"a": ["1"], "site": ["north wing"]}
    assert parse_qs(request.body.decode()) == {"dev": ["dev-1"], "n": ["7"]}
    assert request.headers["X-Device"] == "dev-1" and request.headers["X-Fixed"] == "yes"


def test_basic_and_token_auth() -> None:
    _, request = build(url="https://x.example", auth_username="user", auth_password="pa:ss")
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"user:pa:ss").decode()
    _, request = build(url="https://x.example", auth_token="t0k")
    assert request.headers["Authorization"] == "Bearer t0k"
    _, request = build(url="https://x.example", auth_token="t0k", auth_header="X-Auth-Token", auth_scheme="")
    assert request.headers["X-Auth-Token"] == "t0k"


def test_header_injection_is_refused() -> None:
    bad = dict(UPLINK, uplink_message=dict(UPLINK["uplink_message"], decoded_payload={"v": "a\r\nX-Evil: 1"}))
    builder = RequestBuilder(WebhookSettings(url="https://x.example", headers='{"X-V": "{{decoded_payload.v}}"}'))
    ev = Event("uplink", "t", "app-1", "dev-1", bad)
    with pytest.raises(InvalidRequest):
        builder.build(ev, build_context(ev, "hook"), b"{}")


@pytest.mark.parametrize(
    ("settings", "where"),
    [
        ({"body_format": "json", "body": "{not json"}, "WEBHOOK_BODY: not valid JSON"),
        ({"body_format": "raw", "body": "{{#a}} never closed"}, "WEBHOOK_BODY: invalid Mustache"),
        ({"headers": '["a"]'}, "WEBHOOK_HEADERS: must be a JSON object"),
        ({"body_format": "form", "body": "[1]"}, "a form body must be a JSON object"),
    ],
)
def test_broken_templates_name_the_setting(settings: dict[str, str], where: str) -> None:
    with pytest.raises(TemplateError, match=where):
        RequestBuilder(WebhookSettings(url="https://x.example", **settings))


def test_settings_reject_unknown_events_and_bad_urls() -> None:
    with pytest.raises(ValueError, match="unknown events"):
        WebhookSettings(url="https://x.example", events="uplink,teleport")
    with pytest.raises(ValueError, match="http"):
        WebhookSettings(url="ftp://x.example")


def test_response_downlinks_json_text_and_tts_forms() -> None:
    downlinks, problems = response_downlinks('{"frm_payload": "AQ==", "f_port": 5}', 1, False)
    assert problems == [] and downlinks == [
        {"f_port": 5, "frm_payload": "AQ==", "confirmed": False, "priority": "NORMAL", "correlation_ids": []}
    ]
    downlinks, _ = response_downlinks("hello", 9, True)
    assert downlinks[0]["frm_payload"] == base64.b64encode(b"hello").decode()
    assert downlinks[0]["f_port"] == 9 and downlinks[0]["confirmed"] is True
    downlinks, _ = response_downlinks(
        '{"downlinks": [{"decoded_payload": {"x": 1}}, {"frm_payload": "AA=="}]}', 3, False
    )
    assert [d["f_port"] for d in downlinks] == [3, 3]
    assert response_downlinks("   ", 1, False) == ([], [])


def test_invalid_response_downlink_is_reported() -> None:
    downlinks, problems = response_downlinks('{"frm_payload": "not base64!", "f_port": 300}', 1, False)
    assert downlinks == []
    assert any("f_port" in p for p in problems) and any("base64" in p for p in problems)


def test_retry_after_header() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_json_template_without_tags_is_returned_as_is() -> None:
    assert JsonTemplate({"a": [1, {"b": None}]}, "X").render({}) == {"a": [1, {"b": None}]}


def test_values_render_as_javascript_prints_them() -> None:
    # An InfluxDB line with a null field used to become x=None, which the target refuses (400): the uplink was lost.
    values = {"flag": True, "off": False, "none": None, "levels": [1, 2.5, None], "obj": {"a": 1}, "whole": 21.0}
    event = Event("uplink", "t", "app-1", "dev-1", {**UPLINK, "uplink_message": {"decoded_payload": values}})
    context = build_context(event, "hook")
    source = (
        "{{#decoded_payload}}f={{flag}},o={{off}},n={{none}},l={{levels}},j={{obj}},w={{whole}}{{/decoded_payload}}"
    )
    config = WebhookSettings(url="https://example.com/q?{{decoded_payload.flag}}", body_format="raw", body=source)
    request = RequestBuilder(config).build(event, context, b"")
    assert request.body == b"f=true,o=false,n=,l=1,2.5,,j={&quot;a&quot;:1},w=21"  # raw bodies HTML-escape {{x}}
    assert request.url == "https://example.com/q?true"
    typed = RequestBuilder(
        WebhookSettings(url="https://example.com", body_format="json", body='{"t": "{{decoded_payload.whole}} C"}')
    ).build(event, context, b"")
    assert json.loads(typed.body or b"") == {"t": "21 C"}
    form = RequestBuilder(
        WebhookSettings(
            url="https://example.com",
            body_format="form",
            body='{"w": "{{decoded_payload.whole}}", "f": "{{decoded_payload.flag}}"}',
        )
    ).build(event, context, b"")
    assert parse_qs(form.body.decode() if form.body else "") == {"w": ["21"], "f": ["true"]}


@pytest.mark.parametrize(
    ("value", "printed"),
    [
        (0.00001, "0.00001"),
        (1e-7, "1e-7"),
        (1e21, "1e+21"),
        (21.0, "21"),
        (-0.5, "-0.5"),
        ({"x": 1.0, "y": [2.0, None]}, '{"x":1,"y":[2,null]}'),
        ([1.0, None, True], "1,,true"),
        (None, ""),
    ],
)
def test_numbers_and_containers_print_as_javascript_prints_them(value: Any, printed: str) -> None:
    assert js_text(value) == printed


def test_a_particle_definition_renders_a_named_event_as_particle_would() -> None:
    publish = {"name": "temperature/room1", "data": '{"t": 21.5, "ok": true}', "published_at": "2026-01-02T03:04:05Z"}
    payload = {"end_device_ids": UPLINK["end_device_ids"], "correlation_ids": ["pub:1"], "publish": publish}
    event = Event("publish", "t", "app-1", "dev-1", payload)
    context = build_context(event, "hook")
    settings = WebhookSettings(
        url="https://example.com/{{PARTICLE_EVENT_NAME}}/{{SPARK_CORE_ID}}",
        body_format="json",
        body='{"value": "{{{PARTICLE_EVENT_VALUE}}}", "t": "{{t}}", "at": "{{PARTICLE_PUBLISHED_AT}}"}',
    )
    request = RequestBuilder(settings).build(event, context, b"")
    assert request.url == "https://example.com/temperature%2Froom1/dev-1"
    assert json.loads(request.body or b"") == {
        "value": '{"t": 21.5, "ok": true}',
        "t": 21.5,  # keys of JSON data are variables, as on Particle
        "at": "2026-01-02T03:04:05Z",
    }
    data = '{"event": "boot", "message": "hi", "PARTICLE_DEVICE_ID": "x", "device_id": "victim", "device": {}}'
    clashing = {**publish, "data": data}
    named = build_context(Event("publish", "t", "app-1", "dev-1", {**payload, "publish": clashing}), "hook")
    assert (named["event"], named["message"], named["PARTICLE_DEVICE_ID"]) == ("boot", "hi", "dev-1")
    assert named["device_id"] == "dev-1" and named["device"] == {"name": "", "attributes": {}}  # never forged
    uplink = build_context(event_for(UPLINK), "hook")
    assert uplink["PARTICLE_EVENT_NAME"] == "uplink"
    assert json.loads(uplink["PARTICLE_EVENT_VALUE"])["temperature"] == 21.5


def event_for(payload: dict[str, Any]) -> Event:
    return Event("uplink", "t", "app-1", "dev-1", payload)


PUBLISH: dict[str, Any] = {
    "end_device_ids": {"device_id": "photon-1", "application_ids": {"application_id": "app-1"}},
    "correlation_ids": ["pub:1"],
    "received_at": "2026-01-02T03:04:05Z",
    "publish": {"name": "temp", "data": "21.5", "ttl": 60, "private": True, "published_at": "2026-01-02T03:04:05Z"},
}
DEFAULTS = {"event": ["temp"], "data": ["21.5"], "published_at": ["2026-01-02T03:04:05Z"], "coreid": ["photon-1"]}


def built_for_publish(**settings: Any) -> Any:
    named = Event("publish", "v3/app-1/devices/photon-1/publish", "app-1", "photon-1", PUBLISH, None)
    builder = RequestBuilder(WebhookSettings(url="https://example.com/hook", **settings))
    return builder.build(named, build_context(named, "hook"), json.dumps(PUBLISH).encode())


def test_particle_default_fields_go_where_particle_puts_them() -> None:
    """Without a body they are the form body; with a form they join it (its own fields win); a GET carries them
    in its query; a JSON object body gets them too (Particle's "include default data"); noDefaults
    (particle_defaults off), a raw body or the message as it is leave them out."""
    alone = built_for_publish(body_format="none", particle_defaults=True)
    assert alone.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert parse_qs(alone.body.decode()) == DEFAULTS
    joined = built_for_publish(
        body_format="form", body='{"data": "{{PARTICLE_EVENT_VALUE}}0", "x": "1"}', particle_defaults=True
    )
    assert parse_qs(joined.body.decode()) == {**DEFAULTS, "data": ["21.50"], "x": ["1"]}
    query = built_for_publish(method="GET", body_format="none", query='{"k": "v"}', particle_defaults=True)
    assert parse_qs(urlsplit(query.url).query) == {**DEFAULTS, "k": ["v"]} and query.body is None
    assert built_for_publish(body_format="none").body is None
    as_json = json.loads(
        built_for_publish(body_format="json", body='{"a": 1, "event": "x"}', particle_defaults=True).body
    )
    assert as_json == {**{key: value[0] for key, value in DEFAULTS.items()}, "a": 1, "event": "x"}
    assert built_for_publish(body_format="raw", body="{{PARTICLE_EVENT_VALUE}}", particle_defaults=True).body == b"21.5"
    assert "coreid" not in json.loads(built_for_publish(body_format="json", body='{"a": 1}').body)


def test_auth_headers_count_as_secrets_of_the_request() -> None:
    """So what a target echoes of them is masked before it reaches the device or an event."""
    basic = built_for_publish(auth_username="u", auth_password="hunter22")
    assert basic.headers["Authorization"] in basic.secrets
    bearer = built_for_publish(auth_token="tok-123")
    assert "Bearer tok-123" in bearer.secrets


def test_secret_query_values_are_sent_and_known_as_secrets() -> None:
    request = built_for_publish(query='{"f": "1"}', secret_query='{"api_key": "k-{{PARTICLE_DEVICE_ID}}"}')
    assert parse_qs(urlsplit(request.url).query) == {"f": ["1"], "api_key": ["k-photon-1"]}
    assert "k-photon-1" in request.secrets


def test_renamed_settings_are_refused_not_ignored() -> None:
    """A filter under its old name would be ignored and every event sent: it is refused, naming the new one."""
    from webhook_worker.check import check_environment

    problems = check_environment({"WEBHOOK_URL": "https://example.com", "WEBHOOK_EVENT_PREFIX": "temp"})
    assert ("WEBHOOK_EVENT_PREFIX", "renamed WORKER_EVENT_PREFIX: set that instead") in problems
