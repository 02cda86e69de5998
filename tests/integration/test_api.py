"""The HTTP API as users meet it: authentication, scopes, devices, downlinks, MQTT access by key."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from orchestrator.config import PROJECT_ROOT
from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator

APP = "api-app"
pytestmark = pytest.mark.usefixtures("both_databases")  # every test on SQLite and on PostgreSQL


def test_authentication_and_scopes(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_application("other-app")
    anonymous = httpx.get(f"{orchestrator.url}/api/v1/applications")
    assert anonymous.status_code == 401 and "Bearer" in anonymous.json()["detail"]
    wrong = httpx.get(f"{orchestrator.url}/api/v1/applications", headers={"Authorization": "Bearer ik.x.y"})
    assert wrong.status_code == 401

    reader = orchestrator.create_key(APP, "devices:read")
    headers = {"Authorization": f"Bearer {reader}"}
    assert httpx.get(f"{orchestrator.url}/api/v1/applications/{APP}/devices", headers=headers).status_code == 200
    denied = httpx.post(
        f"{orchestrator.url}/api/v1/applications/{APP}/devices", headers=headers, json={"device_id": "dev-1"}
    )
    assert denied.status_code == 403 and "devices:write" in denied.json()["detail"]
    other = httpx.get(f"{orchestrator.url}/api/v1/applications/other-app/devices", headers=headers)
    assert other.status_code == 403 and "belongs to application api-app" in other.json()["detail"]
    listed = httpx.get(f"{orchestrator.url}/api/v1/applications", headers=headers).json()
    assert [a["id"] for a in listed] == [APP]

    keys = orchestrator.call("GET", f"/api/v1/applications/{APP}/keys", 200).json()
    assert "key" not in keys[0] and keys[0]["scopes"] == ["devices:read"]
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/keys/{keys[0]['id']}", 204)
    revoked = httpx.get(f"{orchestrator.url}/api/v1/applications/{APP}/devices", headers=headers)
    assert revoked.status_code == 401


def test_device_registry_and_validation(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    device = orchestrator.create_device(
        APP, "dev-1", name="Boiler", dev_eui="0004a30b001c0530", attributes={"floor": "2"}
    )
    assert device["dev_eui"] == "0004a30b001c0530" and device["attributes"] == {"floor": "2"}
    orchestrator.call("POST", f"/api/v1/applications/{APP}/devices", 409, json={"device_id": "dev-1"})
    bad = orchestrator.call(
        "POST",
        f"/api/v1/applications/{APP}/devices",
        422,
        json={"device_id": "Bad_Id", "dev_eui": "xyz", "colour": "red"},
    ).json()
    assert {e["field"] for e in bad["errors"]} == {"device_id", "dev_eui", "colour"}
    page = orchestrator.call("GET", f"/api/v1/applications/{APP}/devices?limit=1", 200).json()
    assert page["total"] == 1 and page["items"] == [device]  # listed exactly as created
    updated = orchestrator.call(
        "PATCH", f"/api/v1/applications/{APP}/devices/dev-1", 200, json={"name": "Heater"}
    ).json()
    assert updated["name"] == "Heater" and updated["attributes"] == {"floor": "2"}
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/devices/dev-1", 204)
    orchestrator.call("GET", f"/api/v1/applications/{APP}/devices/dev-1", 404)
    orchestrator.call("GET", "/api/v1/applications/none/devices/dev-1", 404)


def test_downlink_queue_over_http_and_mqtt(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    key = orchestrator.create_key(APP, "downlinks:write", "messages:read", "uplinks:write")
    client = MqttProbe(orchestrator.mqtt_url, ".".join(key.split(".")[:2]), key)
    client.subscribe(f"v3/{APP}/devices/dev-1/down/#")
    path = f"/api/v1/applications/{APP}/devices/dev-1/downlinks"
    queued = orchestrator.call(
        "POST",
        path,
        201,
        json={
            "downlinks": [
                {"f_port": 2, "frm_payload": "AQ==", "priority": "LOW"},
                {"f_port": 3, "frm_payload": "Ag==", "priority": "HIGH"},
            ]
        },
    ).json()["downlinks"]
    assert all(item["id"] and f"down:{item['id']}" in item["correlation_ids"] for item in queued)
    client.publish(f"v3/{APP}/devices/dev-1/down/push", {"downlinks": [{"f_port": 300, "frm_payload": "AQ=="}]})
    failed = client.collect(1, topic_suffix="/down/failed")[0][1]
    assert "f_port" in failed["downlink_failed"]["error"]["message"]
    too_big = orchestrator.call("POST", path, 422, json={"downlinks": [{"f_port": 2, "frm_payload": "A" * 400}]}).json()
    assert too_big["errors"][0]["field"] == "downlinks.0.frm_payload"

    # Highest priority first, one per uplink (class A); MQTT devices get it on down/deliver.
    first = orchestrator.uplink(APP, "dev-1", {"f_port": 1})["downlink"]
    assert first["f_port"] == 3
    client.publish(f"v3/{APP}/devices/dev-1/up/push", {"f_port": 1})
    delivered = [body for _, body in client.collect(2, topic_suffix="/down/deliver")]
    assert [d["f_port"] for d in delivered] == [3, 2] and delivered[1]["id"] == queued[0]["id"]
    assert orchestrator.call("GET", path, 200).json() == {"downlinks": []}
    client.collect(2, topic_suffix="/down/sent")
    orchestrator.call("POST", path + "?replace=true", 201, json={"downlinks": [{"f_port": 9, "frm_payload": "AA=="}]})
    orchestrator.call("POST", path + "?replace=true", 201, json={"downlinks": [{"f_port": 8, "frm_payload": "AA=="}]})
    assert [d["f_port"] for d in orchestrator.call("GET", path, 200).json()["downlinks"]] == [8]
    client.close()


def test_broker_checks_keys_and_their_application(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_application("other-app")
    orchestrator.create_device("other-app", "dev-9")
    key = orchestrator.create_key(APP, "messages:read", "uplinks:write")
    username = ".".join(key.split(".")[:2])
    assert MqttProbe(orchestrator.mqtt_url, username, key + "x").refused
    assert MqttProbe(orchestrator.mqtt_url, None, None).refused

    spy = MqttProbe(orchestrator.mqtt_url, username, key)
    spy.subscribe("v3/other-app/#")
    spy.subscribe(f"v3/{APP}/#")
    spy.publish("v3/other-app/devices/dev-9/up/push", {"f_port": 1})  # not allowed: silently dropped
    orchestrator.uplink("other-app", "dev-9", {"f_port": 7})
    orchestrator.create_device(APP, "mine")
    spy.collect(1, topic_suffix="/events/create")
    assert not [topic for topic, _ in spy.seen if topic.startswith("v3/other-app/")]
    spy.close()


def test_openapi_docs_and_health(orchestrator: RunningOrchestrator) -> None:
    assert httpx.get(f"{orchestrator.url}/docs").status_code == 200
    spec = httpx.get(f"{orchestrator.url}/openapi.json").json()
    assert "/api/v1/applications/{app_id}/integrations" in spec["paths"]
    health = httpx.get(f"{orchestrator.url}/healthz").json()
    assert {k: health[k] for k in ("status", "broker", "runtime", "templates")} == {
        "status": "ok",
        "broker": "connected",
        "runtime": "process",
        "templates": len(list((PROJECT_ROOT / "integration_templates").glob("*.yaml"))),
    }
    assert health["reconciler"]["passes"] >= 1
    assert httpx.get(f"{orchestrator.url}/livez").json() == {"status": "ok"}
    ready = httpx.get(f"{orchestrator.url}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    templates = orchestrator.call("GET", "/api/v1/templates", 200).json()
    webhook = next(t for t in templates if t["id"] == "webhook")
    assert webhook["logo"] == "/api/v1/templates/webhook/logo" and "environment" not in webhook
    assert httpx.get(orchestrator.url + webhook["logo"]).headers["content-type"].startswith("image/svg")


def test_integration_list_pages_and_filters_by_state(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    for name in ("c", "a", "b"):
        orchestrator.create_integration(
            APP, id=f"hook-{name}", template_id="webhook", enabled=False, config={"url": "http://127.0.0.1:9/x"}
        )
    for name in ("a", "b", "c"):
        orchestrator.wait_state(APP, f"hook-{name}", "stopped")
    base = f"/api/v1/applications/{APP}/integrations"

    first = orchestrator.call("GET", base + "?limit=2", 200).json()
    assert [item["id"] for item in first["items"]] == ["hook-a", "hook-b"]
    assert (first["total"], first["offset"], first["limit"]) == (3, 0, 2)
    rest = orchestrator.call("GET", base + "?limit=2&offset=2", 200).json()
    assert [item["id"] for item in rest["items"]] == ["hook-c"]
    # A listed integration reads exactly as its own GET does (times, states, counters written the same way).
    for item in first["items"] + rest["items"]:
        assert item == orchestrator.call("GET", f"{base}/{item['id']}", 200).json()

    assert orchestrator.call("GET", base + "?state=stopped", 200).json()["total"] == 3
    assert orchestrator.call("GET", base + "?state=running", 200).json() == {
        "items": [],
        "total": 0,
        "offset": 0,
        "limit": 100,
    }
    for query, field in (("state=sleeping", "state"), ("limit=0", "limit"), ("offset=-1", "offset")):
        problem = orchestrator.call("GET", f"{base}?{query}", 422).json()
        assert [error["field"] for error in problem["errors"]] == [f"query.{field}"], query


def test_a_template_can_cap_its_replicas(orchestrator: RunningOrchestrator) -> None:
    # IoT Hub takes one connection per device, so its template allows one replica.
    orchestrator.create_application(APP)
    base = f"/api/v1/applications/{APP}/integrations"
    template = orchestrator.call("GET", "/api/v1/templates/azure-iot-hub", 200).json()
    assert template["max_replicas"] == 1
    body = {"template_id": "azure-iot-hub", "replicas": 2, "config": {}}
    problem = orchestrator.call("POST", base, 422, json=body).json()
    assert problem["errors"] == [
        {"field": "replicas", "message": "the Azure IoT Hub integration runs at most 1 replica(s)"}
    ]
    orchestrator.create_integration(
        APP, id="hook", template_id="webhook", enabled=False, config={"url": "http://127.0.0.1:9/"}
    )
    orchestrator.call("PATCH", f"{base}/hook", 200, json={"replicas": 3})  # the webhook scales


def test_bodies_that_are_not_json_an_api_can_keep_are_a_422_naming_the_body(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "dev-1")
    base = f"/api/v1/applications/{APP}/devices/dev-1"
    headers = {"Content-Type": "application/json"}
    # Bytes that are not UTF-8 are refused by name, wherever a JSON body goes.
    for path, content in (
        (f"{base}/uplinks", b"\xff\xfe{\x00}\x00"),  # UTF-16: JSON on the wire is UTF-8
        (f"{base}/downlinks", b"\xff\xfe{\x00}\x00"),
        (f"/api/v1/applications/{APP}/devices", b"\xff\xff\xfe"),  # not text at all
    ):
        problem = orchestrator.call("POST", path, 422, content=content, headers=headers).json()
        assert problem["errors"][0]["field"] == "(body)", (path, problem)
        assert "JSON" in problem["errors"][0]["message"], problem
    # Past the limits: a device message's size and depth name their settings; a body too large for any route is 413.
    large = {"f_port": 1, "decoded_payload": {"text": "x" * 140_000}}
    problem = orchestrator.call("POST", f"{base}/uplinks", 422, json=large).json()
    assert "at most 131072 are allowed (ORCH_HANDLER__MAX_MESSAGE_BYTES)" in problem["errors"][0]["message"]
    deep = b'{"f_port": 1, "decoded_payload": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}"
    problem = orchestrator.call("POST", f"{base}/uplinks", 422, content=deep, headers=headers).json()
    assert "ORCH_HANDLER__MAX_JSON_DEPTH" in problem["errors"][0]["message"]
    huge = orchestrator.call("POST", f"{base}/uplinks", 413, content=b"[" + b"1," * 600_000 + b"1]", headers=headers)
    assert huge.text == "Content Too Large"  # Starlette's answer, before anything reads the body
    # An integer past 64 bits cannot be kept exactly (JSON parsers make it a float): refused by name, not a 500.
    big = 123456789012345678901234567890
    for path, body in (
        (f"{base}/downlinks", {"downlinks": [{"f_port": 1, "decoded_payload": {"x": big}}]}),
        (f"{base}/downlinks", {"downlinks": [{"f_port": 1, "frm_payload": "AQ==", "x": big}]}),
        (f"{base}/uplinks", {"f_port": 1, "decoded_payload": {"x": -big}}),
    ):
        problem = orchestrator.call("POST", path, 422, json=body).json()
        assert problem["errors"][0]["field"] == "(body)" and "64-bit" in problem["errors"][0]["message"], problem
    edge = {"downlinks": [{"f_port": 1, "decoded_payload": {"x": 2**64 - 1, "y": -(2**63), "s": "1" * 30}}]}
    orchestrator.call("POST", f"{base}/downlinks", 201, json=edge)  # 64 bits, and long digits in a string, are fine
    assert (
        orchestrator.call("GET", f"{base}/downlinks", 200).json()["downlinks"][0]["decoded_payload"]
        == (edge["downlinks"][0]["decoded_payload"])
    )
    # Unknown API paths and methods a route does not take: a problem each, a 405 naming what is allowed.
    assert orchestrator.call("GET", "/api/v1/nothing-here", 404).headers["content-type"] == "application/problem+json"
    refused = orchestrator.call("PUT", f"/api/v1/applications/{APP}", 405)
    assert refused.headers["allow"] == "DELETE, GET, PATCH"
    assert orchestrator.call("GET", f"{base}/uplinks", 405).headers["allow"] == "POST"
    assert (
        orchestrator.call("GET", f"/api/v1/applications/{APP}/devices?offset=9999999999999999999", 422).json()[
            "errors"
        ][0]["field"]
        == "query.offset"
    )


def test_json_logs_are_one_object_a_line(tmp_path: Path, mosquitto: str) -> None:
    orch = RunningOrchestrator(tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_LOG_FORMAT="json").start()
    try:
        orch.create_application(APP)
        orch.call("GET", f"/api/v1/applications/{APP}/devices/nobody", 404)
    finally:
        orch.stop()
    lines = [line for line in (orch.data_dir / "orchestrator.log").read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, the server's own included
    assert all({"time", "level", "logger", "message"} <= record.keys() for record in records), lines[:3]
    assert any(record["message"].startswith("orchestrator ready") for record in records)


def test_each_image_s_own_check_refuses_what_its_worker_would(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    base = f"/api/v1/applications/{APP}/integrations"
    for template, config, field, says in (
        (
            "google-pubsub",
            {"project_id": "my-project", "topic": "t", "credentials_json": "{not json"},
            "credentials_json",
            "is not JSON",
        ),
        ("azure-iot-hub", {"hub_hostname": "hub.azure-devices.net", "policy_key": "%%%"}, "policy_key", "base64"),
    ):
        problem = orchestrator.call("POST", base, 422, json={"template_id": template, "config": config}).json()
        assert [(e["field"], says in e["message"]) for e in problem["errors"]] == [(f"config.{field}", True)], problem
