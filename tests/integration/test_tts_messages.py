"""The Things Stack's messages as its users send and read them: whole uplinks, joins, downlink acks and nacks,
service data, solved locations, its `down/failed` error and an empty `down/replace` (over MQTT and HTTP)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator
from tests.support.waiting import wait_for

APP = "tts-app"
DEVICE = "dev1"
pytestmark = pytest.mark.usefixtures("both_databases")  # every test on SQLite and on PostgreSQL

# The uplink example of The Things Stack's documentation ("Data Formats"), as it publishes it.
TTS_UPLINK: dict[str, Any] = {
    "end_device_ids": {
        "device_id": DEVICE,
        "application_ids": {"application_id": APP},
        "dev_eui": "0004A30B001C0530",
        "join_eui": "800000000000000C",
        "dev_addr": "00BCB929",
    },
    "correlation_ids": [
        "as:up:01E0WZGT6Y7657CPFPE5WEYDSQ",
        "gs:conn:01E0WDEC6T5T4XXBAX7S1VMFKE",
        "gs:uplink:01E0WZGSZWT07NE5TS2APTV1Z9",
        "ns:uplink:01E0WZGSZXZXZS8RFAWZX0F2FY",
        "rpc:/ttn.lorawan.v3.GsNs/HandleUplink:01E0WZGSZXGE1KS577PFBWRJEE",
    ],
    "received_at": "2020-02-12T15:15:46.014773143Z",
    "uplink_message": {
        "session_key_id": "AXA50tHUGUucuzS/bCGMNw==",
        "f_cnt": 1,
        "frm_payload": "gkHe",
        "decoded_payload": {"temperature": 1.0, "luminosity": 0.64},
        "rx_metadata": [
            {
                "gateway_ids": {"gateway_id": "gtw1", "eui": "9C5C8E00001A05C4"},
                "time": "2020-02-12T15:15:45.787Z",
                "timestamp": 2463457000,
                "rssi": -35,
                "channel_rssi": -35,
                "snr": 5,
                "uplink_token": "ChIKEAoEZ3R3MRIInFyOAAAaBcQQ6L3Vlgk=",
                "channel_index": 2,
            }
        ],
        "settings": {
            "data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}},
            "data_rate_index": 5,
            "coding_rate": "4/6",
            "frequency": "868300000",
            "timestamp": 2463457000,
            "time": "2020-02-12T15:15:45.787Z",
        },
        "consumed_airtime": "0.056576s",
        "locations": {
            "user": {
                "latitude": 37.97155556731436,
                "longitude": 23.72678801175413,
                "altitude": 10,
                "source": "SOURCE_REGISTRY",
            }
        },
        "version_ids": {"brand_id": "the-things-products", "model_id": "the-things-uno"},
        "network_ids": {"net_id": "000013", "tenant_id": "ttn", "cluster_id": "eu1"},
        "received_at": "2020-02-12T15:15:45.789585559Z",
    },
    "simulated": True,
}


@pytest.fixture
def device(orchestrator: RunningOrchestrator) -> MqttProbe:
    """The device registered as in the example, and an MQTT client with a device's and a reader's scopes."""
    orchestrator.create_application(APP)
    ids = TTS_UPLINK["end_device_ids"]
    orchestrator.create_device(APP, DEVICE, dev_eui=ids["dev_eui"], join_eui=ids["join_eui"])
    key = orchestrator.create_key(APP, "uplinks:write", "downlinks:write", "messages:read")
    client = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    client.subscribe(f"v3/{APP}/devices/{DEVICE}/#")
    return client


def test_the_documentations_uplink_passes_through_field_for_field(
    orchestrator: RunningOrchestrator, device: MqttProbe
) -> None:
    answer = orchestrator.uplink(APP, DEVICE, copy.deepcopy(TTS_UPLINK))["uplink"]
    device.publish(f"v3/{APP}/devices/{DEVICE}/up/push", TTS_UPLINK)
    forwarded = [body for _, body in device.collect(2, topic_suffix=f"/{DEVICE}/up")]
    assert forwarded[0] == answer
    for uplink in forwarded:
        assert uplink["uplink_message"] == TTS_UPLINK["uplink_message"]  # every field, unknown ones included
        assert uplink["end_device_ids"] == TTS_UPLINK["end_device_ids"]  # dev_addr kept beside the registry's ids
        assert uplink["correlation_ids"][0].startswith("up:")
        assert uplink["correlation_ids"][1:] == TTS_UPLINK["correlation_ids"]
        assert uplink["simulated"] is True and uplink["received_at"] != TTS_UPLINK["received_at"]

    # Wrong types of the fields the handler reads are refused, naming them; so is a typo of one.
    wrong = copy.deepcopy(TTS_UPLINK)
    wrong["uplink_message"].update(f_port="one", received_at="yesterday", fport=1)
    path = f"/api/v1/applications/{APP}/devices/{DEVICE}/uplinks"
    problems = orchestrator.call("POST", path, 422, json=wrong).json()["errors"]
    assert {p["field"] for p in problems} == {
        "uplink_message.f_port",
        "uplink_message.received_at",
        "uplink_message.fport",
    }
    assert "did you mean f_port" in str(problems)


def test_joins_acks_nacks_service_data_and_locations_appear_as_the_things_stack_shapes_them(
    orchestrator: RunningOrchestrator, device: MqttProbe
) -> None:
    topic = f"v3/{APP}/devices/{DEVICE}"
    reports = f"/api/v1/applications/{APP}/devices/{DEVICE}/reports"

    device.publish(f"{topic}/join/push", {"session_key_id": "AXBSH1Pk6Z0G166RlH16CQ=="})
    join = device.collect(1, topic_suffix=f"/{DEVICE}/join")[0][1]
    assert join["join_accept"]["session_key_id"] == "AXBSH1Pk6Z0G166RlH16CQ=="
    assert join["join_accept"]["received_at"].endswith("Z")
    assert join["end_device_ids"]["dev_eui"] == "0004A30B001C0530"

    # A confirmed downlink goes out with an uplink; the device acknowledges it by the id it was given.
    downlinks = f"/api/v1/applications/{APP}/devices/{DEVICE}/downlinks"
    confirmed = {"f_port": 15, "frm_payload": "vu8=", "confirmed": True, "priority": "NORMAL"}
    orchestrator.call("POST", downlinks, 201, json={"downlinks": [confirmed]})
    sent = orchestrator.uplink(APP, DEVICE, {"f_port": 1})["downlink"]
    # As The Things Stack writes it: the whole downlink_ack, naming the downlink by its down:<id> correlation id.
    tts_ack = {"downlink_ack": {**confirmed, "correlation_ids": [f"down:{sent['id']}"]}}
    device.publish(f"{topic}/down/ack/push", tts_ack)
    ack = device.collect(1, topic_suffix="/down/ack")[0][1]
    assert {key: ack["downlink_ack"][key] for key in confirmed} == confirmed
    assert f"down:{sent['id']}" in ack["downlink_ack"]["correlation_ids"]
    assert f"down:{sent['id']}" in ack["correlation_ids"]

    # A nack (an empty body: the last confirmed downlink sent, as LoRaWAN's ACK bit means) queues it again.
    orchestrator.call("POST", downlinks, 201, json={"downlinks": [{**confirmed, "frm_payload": "AQ=="}]})
    orchestrator.uplink(APP, DEVICE, {"f_port": 1})
    nack = orchestrator.call("POST", f"{reports}/downlink-nack", 201, content=b"").json()
    assert nack["downlink_nack"]["frm_payload"] == "AQ=="
    assert device.collect(1, topic_suffix="/down/nack")[0][1] == nack
    # The same answer again (a retry, a message delivered twice) changes nothing: queued again once only.
    again = orchestrator.call("POST", f"{reports}/downlink-nack", 201, content=b"").json()
    assert again["downlink_nack"] == nack["downlink_nack"]
    queue = orchestrator.call("GET", downlinks, 200).json()["downlinks"]
    assert [item["frm_payload"] for item in queue] == ["AQ=="]
    assert orchestrator.call("POST", f"{reports}/downlink-ack", 201, json={"id": sent["id"]}).json()["downlink_ack"]
    refused = orchestrator.call("POST", f"{reports}/downlink-ack", 422, json={"id": "no-such-downlink"}).json()
    assert "waits for an answer" in refused["errors"][0]["message"]

    device.publish(f"{topic}/service/data/push", {"service_data": {"service": "lora-cloud", "data": {"battery": 97}}})
    service = device.collect(1, topic_suffix="/service/data")[0][1]
    assert service["service_data"] == {"service": "lora-cloud", "data": {"battery": 97}}

    location = {"service": "lora-cloud-gnss", "location": {"latitude": 52.37, "longitude": 4.89, "accuracy": 12}}
    solved = orchestrator.call("POST", f"{reports}/location-solved", 201, json={"location_solved": location}).json()
    assert solved["location_solved"] == location
    assert device.collect(1, topic_suffix="/location/solved")[0][1] == solved
    bad = {"location_solved": {**location, "location": {"latitude": 100, "longitude": 4.89}}}
    problems = orchestrator.call("POST", f"{reports}/location-solved", 422, json=bad).json()["errors"]
    assert problems[0]["field"] == "location_solved.location.latitude"
    ack_error, location_error = [body for _, body in device.collect(2, topic_suffix="/events/up/errors")]
    assert ack_error["request"] == "down/ack/push" and "waits for an answer" in ack_error["error"]["message"]
    assert location_error["request"] == "location/solved/push" and "latitude" in location_error["error"]["message"]

    # down/failed carries The Things Stack's error shape; an empty down/replace clears the queue.
    device.publish(f"{topic}/down/push", {"downlinks": [{"f_port": 0, "frm_payload": "AQ=="}]})
    failed = device.collect(1, topic_suffix="/down/failed")[0][1]["downlink_failed"]["error"]
    assert failed["namespace"] == "orchestrator/handler" and failed["code"] == 3
    assert "f_port" in failed["message_format"] and failed["name"] == "downlink_refused"
    device.publish(f"{topic}/down/replace", {"end_device_ids": TTS_UPLINK["end_device_ids"], "downlinks": []})
    wait_for(
        lambda: orchestrator.call("GET", downlinks, 200).json()["downlinks"] == [],
        what="the queue cleared by an empty down/replace",
    )
