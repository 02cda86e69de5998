"""Pure parts of the handler: topics, keys, uplink normalization, secret redaction."""

from __future__ import annotations

import base64
import hashlib

import pytest

from orchestrator import keys
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
    assert device == [("write", "v3/app/devices/+/up/push"), ("read", "v3/app/devices/+/down/deliver")]


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


def test_tts_shaped_uplink_is_accepted() -> None:
    submission = parse_submission({"uplink_message": {"f_port": 3, "decoded_payload": {"a": 1}, "received_at": "old"}})
    assert submission.f_port == 3 and submission.decoded_payload == {"a": 1}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"f_port": 1, "frm_payload": "@@"}', "frm_payload: must be base64"),
        (b'{"fport": 1}', "fport: Extra inputs are not permitted"),
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
