"""Pure parts of the handler: topics, keys, uplink normalization, secret redaction."""

from __future__ import annotations

import base64
import hashlib

import pytest

from orchestrator import keys
from orchestrator.handler.reports import parse_report
from orchestrator.handler.uplinks import UplinkRejected, normalize, parse_submission
from worker_sdk import topics
from worker_sdk.mqtt import topic_matches
from worker_sdk.redact import Redactor


def test_topics_round_trip() -> None:
    assert topics.device_topic("app", "dev", "up") == "v3/app/devices/dev/up"
    parsed = topics.parse("v3/app/devices/dev/down/queued")
    assert parsed is not None and parsed.event == "downlink.queued" and parsed.device_id == "dev"
    parsed = topics.parse("v3/app/integrations/hook/events/error")
    assert parsed is not None and parsed.event == "integration.error" and parsed.integration_id == "hook"
    parsed = topics.parse("v3/app/integrations/hook/stats")
    assert parsed is not None and parsed.event is None and parsed.suffix == "stats"
    assert topics.parse("other/app/devices/dev/up") is None
    assert topics.parse("v3/app/devices/dev/weird").event is None  # type: ignore[union-attr]


def test_topic_filters() -> None:
    assert topic_matches("v3/+/devices/+/up", "v3/a/devices/d/up")
    assert not topic_matches("v3/+/devices/+/up", "v3/a/devices/d/up/push")
    assert topic_matches("$share/g/v3/a/#", "v3/a/devices/d/up")
    assert not topic_matches("v3/a/devices/+/events/+", "v3/a/devices/d/events/up/errors")


def test_keys_are_random_hashed_and_parseable() -> None:
    first, second = keys.generate(), keys.generate()
    assert first.key != second.key
    assert keys.key_id_of(first.key) == first.key_id
    assert keys.key_id_of("ik.only-two") is None and keys.key_id_of("bearer nonsense") is None
    stored = keys.secret_hash(first.key)
    assert keys.matches(first.key, stored) and not keys.matches(second.key, stored)


def test_mosquitto_hash_is_pbkdf2_sha512_in_mosquittos_format() -> None:
    _, kind, iterations, salt, digest = keys.mosquitto_hash("pw").split("$")
    assert (kind, iterations) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected


def test_broker_grants_follow_scopes() -> None:
    grants = keys.mqtt_grants("app", keys.INTEGRATION_SCOPES, "hook")
    assert ("read", "v3/app/#") in grants
    assert ("write", "v3/app/devices/+/down/push") in grants
    assert ("readwrite", "v3/app/integrations/hook/#") in grants
    assert not any("up/push" in topic for _, topic in grants)
    device = keys.mqtt_grants("app", ["uplinks:write"], None)
    assert device == [
        ("write", "v3/app/devices/+/up/push"),
        *[
            ("write", f"v3/app/devices/+/{kind}/push")
            for kind in ("join", "down/ack", "down/nack", "service/data", "location/solved", "publish")
        ],
        ("read", "v3/app/devices/+/down/deliver"),
    ]


def test_uplink_is_normalized_with_ids_and_time() -> None:
    submission = parse_submission(b'{"f_port": 1, "frm_payload": "AQI=", "correlation_ids": ["sim:1"]}')
    uplink = normalize("app", {"device_id": "dev", "dev_eui": "0004a30b001c0530"}, submission)
    assert uplink["end_device_ids"] == {
        "device_id": "dev",
        "application_ids": {"application_id": "app"},
        "dev_eui": "0004A30B001C0530",
    }
    assert uplink["correlation_ids"][0].startswith("up:") and uplink["correlation_ids"][1] == "sim:1"
    assert uplink["received_at"].endswith("Z") and uplink["uplink_message"]["received_at"] == uplink["received_at"]
    assert uplink["uplink_message"]["frm_payload"] == "AQI="
    other = normalize("app", {"device_id": "dev"}, submission)
    assert other["correlation_ids"][0] != uplink["correlation_ids"][0]


def test_tts_shaped_uplink_keeps_every_field_but_the_registrys_ids() -> None:
    body = {
        "end_device_ids": {"device_id": "someone-else", "dev_addr": "00BCB929"},
        "correlation_ids": ["ns:uplink:1"],
        "received_at": "2020-02-12T15:15:46Z",
        "uplink_message": {"f_port": 3, "consumed_airtime": "0.05s", "received_at": "2020-02-12T15:15:45.789585559Z"},
        "simulated": True,
    }
    uplink = normalize("app", {"device_id": "dev"}, parse_submission(body))
    assert uplink["end_device_ids"] == {
        "device_id": "dev",
        "application_ids": {"application_id": "app"},
        "dev_addr": "00BCB929",
    }
    assert uplink["uplink_message"] == body["uplink_message"] and uplink["simulated"] is True
    assert uplink["correlation_ids"][1:] == ["ns:uplink:1"] and uplink["received_at"] != body["received_at"]


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("join", b"[]", "join/push must be a JSON object"),
        ("down/ack", b'{"id": 7}', "id: Input should be a valid string"),
        ("down/ack", b'{"id": ""}', "id: String should have at least 1 character"),
        ("join", b'{"join_accept": "x"}', "join_accept: must be an object"),
        (
            "join",
            b'{"join_accept": {}, "uplink_message": {}}',
            "uplink_message: one kind per message, and this one is join_accept",
        ),
        ("service/data", b'{"service": "x"}', "data: Field required"),
        (
            "location/solved",
            b'{"location_solved": {"service": "s", "location": {"latitude": 1}}}',
            "location_solved.location.longitude",
        ),
        ("join", b'{"correlation_ids": "x"}', "correlation_ids: must be a list of strings"),
        ("publish", b'{"data": "1"}', "name: Field required"),
        ("publish", b'{"name": "temp erature"}', "name: must be 1 to 64 letters, digits, _, - or /"),
        ("publish", b'{"name": "' + b"x" * 65 + b'"}', "name: must be 1 to 64 letters, digits, _, - or /"),
        ("publish", b'{"name": "t", "data": 21.5}', 'data: must be text, as Particle\'s data is: send "21.5"'),
        ("publish", b'{"name": "t", "public": true}', "public: unknown field"),
    ],
)
def test_bad_reports_are_rejected_with_the_reason(kind: str, body: bytes, message: str) -> None:
    with pytest.raises(UplinkRejected, match=message):
        parse_report(kind, body)


def test_reports_take_their_own_fields_or_a_whole_tts_message() -> None:
    assert parse_report("down/ack", b"").content == {}
    whole = parse_report("join", {"end_device_ids": {"dev_addr": "01497ECC"}, "join_accept": {"session_key_id": "AX"}})
    assert whole.content == {"session_key_id": "AX"} and whole.device_ids == {"dev_addr": "01497ECC"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"f_port": 1, "frm_payload": "@@"}', "frm_payload: must be base64"),
        (b'{"fport": 1}', "fport: unknown field; did you mean f_port"),
        (b'{"uplink_message": {"f_cnt": -1}}', "uplink_message.f_cnt: Input should be greater than or equal to 0"),
        (b'{"received_at": "noon"}', "received_at: must be an RFC 3339 time"),
        (b'{"uplink_message": "x"}', "uplink_message: must be an object"),
        (b'{"uplink_message": {}, "end_device_ids": "x"}', "end_device_ids: must be an object"),
        (
            b'{"uplink_message": {}, "downlink_ack": {}}',
            "downlink_ack: one kind per message, and this one is uplink_message",
        ),
        (b'{"f_port": 999}', "f_port: Input should be less than or equal to 255"),
    ],
)
def test_bad_uplinks_are_rejected_with_the_reason(body: bytes, message: str) -> None:
    with pytest.raises(UplinkRejected, match=message):
        parse_submission(body)


def test_redactor_masks_secrets_everywhere() -> None:
    redactor = Redactor(["s3cr3t-value", "abc"])
    assert redactor.text("token=s3cr3t-value") == "token=***"
    assert redactor.data({"a": ["x s3cr3t-value"], "b": 1}) == {"a": ["x ***"], "b": 1}
    assert redactor.text("abc") == "abc"  # too short to be a secret worth masking text for
