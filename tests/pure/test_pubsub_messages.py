"""Pub/Sub message mapping: attributes of published events, and downlinks parsed from messages."""

from __future__ import annotations

import json

import pytest

from pubsub_worker.config import PubSubSettings
from pubsub_worker.messages import InvalidDownlink, attributes_for, parse_downlink
from pubsub_worker.worker import full_path
from worker_sdk import Event


def test_attributes_are_strings_naming_the_event() -> None:
    event = Event("uplink", "t", "app", "dev", {"correlation_ids": ["up:1"], "received_at": "2026-01-01T00:00:00Z"})
    assert attributes_for(event, "ps") == {
        "application_id": "app",
        "device_id": "dev",
        "event": "uplink",
        "correlation_id": "up:1",
        "received_at": "2026-01-01T00:00:00Z",
        "integration_id": "ps",
    }


def test_downlink_from_attribute_or_field_and_tts_form() -> None:
    device, downlinks = parse_downlink(b'{"f_port": 2, "frm_payload": "AQ=="}', {"device_id": "dev-1"})
    assert device == "dev-1" and downlinks[0]["f_port"] == 2
    device, downlinks = parse_downlink(
        json.dumps({"device_id": "dev-2", "decoded_payload": {"on": True}, "f_port": 1, "confirmed": True}).encode(), {}
    )
    assert device == "dev-2" and downlinks[0]["confirmed"] is True
    body = {
        "end_device_ids": {"device_id": "dev-3"},
        "downlinks": [{"f_port": 1, "frm_payload": "AA=="}, {"f_port": 2, "frm_payload": "AQ=="}],
    }
    device, downlinks = parse_downlink(json.dumps(body).encode(), {})
    assert device == "dev-3" and [d["f_port"] for d in downlinks] == [1, 2]


@pytest.mark.parametrize(
    ("data", "attributes", "reason"),
    [
        (b"\xff not json", {"device_id": "dev"}, "not JSON"),
        (b"[1]", {"device_id": "dev"}, "JSON object"),
        (b'{"f_port": 1, "frm_payload": "AA=="}', {}, "no device"),
        (b'{"f_port": 1, "frm_payload": "AA=="}', {"device_id": "Bad Id"}, "not a valid device id"),
        (b'{"f_port": 0, "frm_payload": "AA=="}', {"device_id": "dev"}, "f_port"),
        (b'{"f_port": 1}', {"device_id": "dev"}, "frm_payload or decoded_payload"),
        (b'{"downlinks": []}', {"device_id": "dev"}, "empty"),
    ],
)
def test_invalid_downlinks_say_why(data: bytes, attributes: dict[str, str], reason: str) -> None:
    with pytest.raises(InvalidDownlink, match=reason):
        parse_downlink(data, attributes)


def test_settings_check_credentials_and_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUBSUB_PROJECT_ID", "my-project")
    monkeypatch.setenv("PUBSUB_TOPIC", "t")
    monkeypatch.setenv("PUBSUB_CREDENTIALS_JSON", '{"type": "authorized_user"}')
    with pytest.raises(ValueError, match="service account"):
        PubSubSettings()  # type: ignore[call-arg]
    assert full_path("topics", "p", "t") == "projects/p/topics/t"
    assert full_path("topics", "p", "projects/q/topics/u") == "projects/q/topics/u"
