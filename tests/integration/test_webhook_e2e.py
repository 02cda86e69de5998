"""End to end on the process runtime: real Mosquitto, real HTTP endpoint, real webhook worker."""

from __future__ import annotations

import itertools
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.mqtt import MqttProbe
from tests.support.orchestrator import RunningOrchestrator, pid_alive
from tests.support.sink import HttpSink, Received, ok_json
from tests.support.tls import make_certificates
from tests.support.waiting import wait_for

APP = "demo-app"
# Every test here runs against the managed broker and against an external one (deploy/mosquitto, over TLS).
pytestmark = pytest.mark.parametrize("orchestrator", ["managed", "external"], indirect=True)


def setup_app(orch: RunningOrchestrator, *devices: str) -> None:
    orch.create_application(APP)
    for device in devices:
        orch.create_device(APP, device, dev_eui="0004A30B001C0530", attributes={"room": "lab 1"})


def probe(orch: RunningOrchestrator, topic: str = f"v3/{APP}/#") -> MqttProbe:
    key = orch.create_key(APP, "messages:read", "uplinks:write")
    client = MqttProbe(orch.mqtt_url, ".".join(key.split(".")[:2]), key)
    client.subscribe(topic)
    return client


def test_uplink_becomes_templated_request_and_response_becomes_downlink(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    setup_app(orchestrator, "dev-1")
    sink.responder = ok_json({"command": "open", "level": 3})
    watcher = probe(orchestrator, f"v3/{APP}/devices/+/down/#")
    orchestrator.create_integration(
        APP,
        id="hook",
        template_id="webhook",
        config={
            "url": sink.url + "/ingest/{{device_id}}?room={{device.attributes.room}}",
            "method": "PUT",
            "body_format": "json",
            "body": json.dumps(
                {
                    "device": "{{device_id}}",
                    "t": "{{decoded_payload.temperature}}",
                    "at": "{{received_at}}",
                    "id": "{{correlation_id}}",
                }
            ),
            "headers": {"X-App": "{{application_id}}"},
            "auth_token": "tok-123456",
            "response_template": '{"f_port": 4, "decoded_payload": {"cmd": "{{response.json.command}}"}}',
        },
    )
    orchestrator.wait_state(APP, "hook", "running")

    uplink = orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"temperature": 21.5}})["uplink"]

    request = wait_for(sink.accepted, what="the webhook request")[0]
    assert request.method == "PUT"
    assert request.path == "/ingest/dev-1" and request.query == {"room": ["lab 1"]}
    assert request.headers["x-app"] == APP
    assert request.headers["authorization"] == "Bearer tok-123456"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "device": "dev-1",
        "t": 21.5,
        "at": uplink["received_at"],
        "id": uplink["correlation_ids"][0],
    }

    pushed = watcher.collect(1, topic_suffix="/down/push")
    topic, body = pushed[0]
    assert topic == f"v3/{APP}/devices/dev-1/down/push"
    downlink = body["downlinks"][0]
    assert downlink["f_port"] == 4 and downlink["decoded_payload"] == {"cmd": "open"}
    assert uplink["correlation_ids"][0] in downlink["correlation_ids"]
    queued = watcher.collect(1, topic_suffix="/down/queued")[0][1]["downlink_queued"]
    assert queued["decoded_payload"] == {"cmd": "open"}

    # Class A: the device gets the downlink in reply to its next uplink.
    reply = orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"temperature": 22}})
    assert reply["downlink"]["decoded_payload"] == {"cmd": "open"}
    watcher.collect(1, topic_suffix="/down/sent")

    integration = wait_for(
        lambda: (i := orchestrator.integration(APP, "hook"))["counters"]["delivered"] >= 2 and i,
        what="delivery counters",
    )
    assert integration["counters"]["failed"] == 0
    assert integration["secrets_set"] == ["auth_token"]
    assert "tok-123456" not in json.dumps(integration)
    watcher.close()


def test_target_down_for_a_minute_loses_nothing(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    setup_app(orchestrator, "dev-1")
    down_until = time.monotonic() + 60
    attempts: list[int] = []

    def flaky(request: Received) -> tuple[int, dict[str, str], bytes]:
        attempts.append(1)
        if time.monotonic() < down_until:
            return 503, {}, b"maintenance"
        return 200, {}, b"ok"

    sink.responder = flaky
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    orchestrator.wait_state(APP, "hook", "running")
    for count in range(20):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})

    received = wait_for(
        lambda: len(sink.accepted()) >= 20 and sink.accepted(), timeout=90, what="all 20 uplinks after the outage"
    )
    numbers = sorted(r.json()["uplink_message"]["decoded_payload"]["n"] for r in received)
    assert numbers == list(range(20))
    assert len(attempts) > 20  # there were failed attempts that were retried
    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "hook")["counters"])["delivered"] >= 20 and c, what="counters"
    )
    assert counters["retried"] > 0 and counters["failed"] == 0
    retries = orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook/activity?kind=retry").json()
    assert retries and "503" in retries[0]["message"]


def test_client_errors_are_not_retried_and_become_error_events(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    setup_app(orchestrator, "dev-1")
    sink.responder = lambda request: (404, {"Content-Type": "text/plain"}, b"no such channel here")
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/x"})
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1})

    errors = wait_for(
        lambda: orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook/activity?kind=error").json(),
        what="error event",
    )
    assert "HTTP 404" in errors[0]["message"] and "no such channel" in errors[0]["message"]
    assert errors[0]["details"]["response"]["status"] == 404
    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "hook")["counters"])["failed"] == 1 and c, what="failed counter"
    )
    assert counters["retried"] == 0
    assert orchestrator.integration(APP, "hook")["status"]["last_error"].startswith("POST")


def test_redirects_are_not_followed_into_a_bodiless_get(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    # A 301 to a GET endpoint would make a lost message look delivered; it is an error naming the new URL.
    setup_app(orchestrator, "dev-1")
    sink.responder = lambda request: (
        (301, {"Location": sink.url + "/moved"}, b"") if request.path == "/old" else (200, {}, b"ok")
    )
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/old"})
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1})
    errors = wait_for(
        lambda: orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook/activity?kind=error").json(),
        what="error event",
    )
    assert f"redirect to {sink.url}/moved" in errors[0]["message"]
    assert [request.path for request in sink.accepted()] == ["/old"]  # nothing went to /moved
    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "hook")["counters"])["failed"] == 1 and c, what="failed counter"
    )
    assert counters["delivered"] == 0


def test_disable_stops_worker_and_enable_delivers_what_came_meanwhile(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    setup_app(orchestrator, "dev-1")
    created = orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    pid = created["status"]["handle"]["pids"][0]
    orchestrator.wait_state(APP, "hook", "running")

    disabled = orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/hook/disable", 200).json()
    assert disabled["enabled"] is False and disabled["status"]["actual"] == "stopped"
    assert disabled["status"]["desired"] == "stopped"
    assert not pid_alive(pid)
    assert disabled["config"]["url"] == sink.url  # configuration kept

    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"while": "disabled"}})
    time.sleep(1)
    assert sink.accepted() == []

    enabled = orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/hook/enable", 200).json()
    assert enabled["status"]["handle"]["pids"][0] != pid
    received = wait_for(sink.accepted, what="the uplink sent while disabled")
    assert received[0].json()["uplink_message"]["decoded_payload"] == {"while": "disabled"}


def test_delete_removes_the_worker(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    setup_app(orchestrator)
    created = orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    pid = created["status"]["handle"]["pids"][0]
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.call("DELETE", f"/api/v1/applications/{APP}/integrations/hook", 204)
    assert not pid_alive(pid)
    orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook", 404)
    keys = orchestrator.call("GET", f"/api/v1/applications/{APP}/keys", 200).json()
    assert keys == []  # the worker's key went with it


def test_invalid_fields_are_reported_one_by_one(orchestrator: RunningOrchestrator) -> None:
    setup_app(orchestrator)
    response = orchestrator.call(
        "POST",
        f"/api/v1/applications/{APP}/integrations",
        422,
        json={
            "template_id": "webhook",
            "config": {"method": "FETCH", "timeout_seconds": "soon", "colour": "red"},
        },
    )
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert {e["field"] for e in problem["errors"]} == {
        "config.url",
        "config.method",
        "config.timeout_seconds",
        "config.colour",
    }
    validate = orchestrator.call(
        "POST",
        f"/api/v1/applications/{APP}/integrations/validate",
        200,
        json={"template_id": "thingspeak", "config": {}},
    ).json()
    assert validate == {
        "valid": False,
        "errors": [{"field": "config.write_api_key", "message": "Write API key is required"}],
    }
    orchestrator.call(
        "POST", f"/api/v1/applications/{APP}/integrations", 404, json={"template_id": "no-such-template", "config": {}}
    )
    orchestrator.call(
        "POST",
        "/api/v1/applications/nope/integrations",
        404,
        json={"template_id": "webhook", "config": {"url": "http://127.0.0.1:1"}},
    )
    assert orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations", 200).json()["total"] == 0


def test_malformed_uplinks_become_error_events_and_the_handler_keeps_going(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    setup_app(orchestrator, "dev-1")
    device_key = orchestrator.create_key(APP, "uplinks:write", "messages:read")
    device = MqttProbe(orchestrator.mqtt_url, ".".join(device_key.split(".")[:2]), device_key)
    device.subscribe(f"v3/{APP}/devices/+/events/up/errors")
    device.subscribe(f"v3/{APP}/devices/+/up")
    device.publish(f"v3/{APP}/devices/dev-1/up/push", b"{this is not json")
    device.publish(f"v3/{APP}/devices/dev-1/up/push", {"f_port": 1, "frm_payload": "%%%"})
    device.publish(f"v3/{APP}/devices/ghost/up/push", {"f_port": 1})
    errors = device.collect(3, topic_suffix="/events/up/errors")
    messages = [body["error"]["message"] for _, body in errors]
    assert "not valid JSON" in messages[0]
    assert "frm_payload: must be base64" in messages[1]
    assert "device 'ghost' does not exist" in messages[2]

    device.publish(f"v3/{APP}/devices/dev-1/up/push", {"f_port": 1, "decoded_payload": {"ok": True}})
    normalized = device.collect(1, topic_suffix="/up")[0][1]
    assert normalized["uplink_message"]["decoded_payload"] == {"ok": True}
    assert normalized["correlation_ids"][0].startswith("up:") and normalized["received_at"]
    bad = orchestrator.call(
        "POST", f"/api/v1/applications/{APP}/devices/dev-1/uplinks", 422, json={"f_port": 1, "frm_payload": "%%%"}
    ).json()
    assert bad["errors"] == [{"field": "frm_payload", "message": "must be base64"}]
    device.close()


def read_events(
    orch: RunningOrchestrator, after: str | None, stop_after: int, prefix: str = ""
) -> list[dict[str, Any]]:
    from httpx_sse import connect_sse

    headers = {"Authorization": f"Bearer {orch.token}"}
    if after:
        headers["Last-Event-ID"] = after
    events: list[dict[str, Any]] = []
    assert orch.api is not None
    with connect_sse(
        orch.api, "GET", f"/api/v1/applications/{APP}/events?prefix={prefix}", headers=headers, timeout=20
    ) as source:
        for sse in source.iter_sse():
            events.append({"event": sse.event, "id": sse.id, "data": sse.json() if sse.data else None})
            if len(events) >= stop_after:
                break
    return events


def test_sse_reconnect_with_last_event_id_misses_nothing(orchestrator: RunningOrchestrator) -> None:
    setup_app(orchestrator, "dev-1")
    first: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: first.extend(read_events(orchestrator, None, 2, "uplink")))
    reader.start()
    time.sleep(1)
    for count in range(2):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})
    reader.join(20)
    assert [e["event"] for e in first] == ["uplink", "uplink"]

    # Disconnected: these happen while nobody listens.
    for count in range(2, 5):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": count}})
    orchestrator.create_device(APP, "dev-2")

    resumed = read_events(orchestrator, first[-1]["id"], 4)
    assert [e["event"] for e in resumed] == ["uplink", "uplink", "uplink", "device.create"]
    assert [e["data"]["uplink_message"]["decoded_payload"]["n"] for e in resumed[:3]] == [2, 3, 4]
    assert all(int(a["id"]) < int(b["id"]) for a, b in itertools.pairwise(resumed))


def test_crashed_worker_is_restarted_and_nothing_is_lost(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    setup_app(orchestrator, "dev-1")
    created = orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    pid = created["status"]["handle"]["pids"][0]
    orchestrator.wait_state(APP, "hook", "running")
    os.kill(pid, signal.SIGKILL)
    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"after": "crash"}})
    received = wait_for(sink.accepted, timeout=30, what="delivery after the crash")
    assert received[0].json()["uplink_message"]["decoded_payload"] == {"after": "crash"}
    status = orchestrator.wait_state(APP, "hook", "running")["status"]
    assert status["restart_count"] == 1 and status["handle"]["pids"][0] != pid
    assert "exit" in (status["last_error"] or "")


def test_test_button_reports_delivery_and_failure(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    setup_app(orchestrator, "dev-1")
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/t"})
    path = f"/api/v1/applications/{APP}/integrations/hook/test"
    orchestrator.wait_state(APP, "hook", "running")
    result = orchestrator.call("POST", path, 200, json={"decoded_payload": {"sample": 1}}).json()
    assert result["outcome"] == "delivered" and result["event"]["details"]["request"]["url"] == sink.url + "/t"
    received = wait_for(sink.accepted)[0].json()
    assert received["uplink_message"]["decoded_payload"] == {"sample": 1}
    assert received["end_device_ids"]["device_id"] == "dev-1"
    sink.responder = lambda request: (400, {}, b"bad field temperature")
    result = orchestrator.call("POST", path, 200, json={}).json()
    assert result["outcome"] == "failed" and "HTTP 400: bad field temperature" in result["message"]
    orchestrator.call("POST", f"/api/v1/applications/{APP}/integrations/hook/disable", 200)
    refused = orchestrator.call("POST", path, 409, json={}).json()
    assert "not running" in refused["detail"]


def test_https_endpoint_signed_by_a_private_ca(orchestrator: RunningOrchestrator, tmp_path: Path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    with HttpSink(tls=(cert, key)) as sink:
        setup_app(orchestrator, "dev-1")
        base = f"/api/v1/applications/{APP}/integrations/hook"
        orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url + "/in"})
        orchestrator.wait_state(APP, "hook", "running")
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"n": 1}})
        # Certificates are checked: an unknown CA is refused, and the message waits (retried), not lost.
        retries = wait_for(
            lambda: orchestrator.call("GET", base + "/activity?kind=retry").json(), what="a retry after the TLS error"
        )
        assert "certificate" in retries[0]["message"].lower()
        assert sink.accepted() == []

        # A PEM that is not one is refused at once, naming the field (the worker would refuse it at start).
        problem = orchestrator.call(
            "PATCH", base, 422, json={"config": {"ca_pem": "-----BEGIN CERTIFICATE-----\nnope"}}
        ).json()
        assert problem["errors"][0]["field"] == "config.ca_pem" and "PEM" in problem["errors"][0]["message"]

        # Trusting the CA delivers the waiting message.
        orchestrator.call("PATCH", base, 200, json={"config": {"ca_pem": ca.read_text()}})
        (received,) = wait_for(sink.accepted, timeout=60, what="delivery over HTTPS")
        assert received.path == "/in" and received.json()["uplink_message"]["decoded_payload"] == {"n": 1}


def test_metrics_show_deliveries_failures_and_state(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    def metrics() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = orchestrator.call("GET", "/metrics", 200)
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    def delivered(values: dict[tuple[str, tuple[tuple[str, str], ...]], float], outcome: str = "delivered") -> float:
        key = (("application", APP), ("integration", "hook"), ("outcome", outcome))
        return values.get(("iot_integration_messages_total", key), -1)

    setup_app(orchestrator, "dev-1")
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config={"url": sink.url})
    orchestrator.wait_state(APP, "hook", "running")
    for n in range(5):
        orchestrator.uplink(APP, "dev-1", {"f_port": 1, "f_cnt": n})
    values = wait_for(lambda: (v := metrics()) and delivered(v) == 5 and v, what="5 deliveries in the metrics")
    assert values[("iot_integration_state", (("application", APP), ("integration", "hook"), ("state", "running")))] == 1
    assert values[("iot_integration_state", (("application", APP), ("integration", "hook"), ("state", "failed")))] == 0
    assert values[("iot_broker_connected", ())] == 1 and values[("iot_cluster_leader", ())] == 1
    ids = (("application", APP), ("integration", "hook"))
    latency = wait_for(
        lambda: (v := metrics()).get(("iot_integration_delivery_latency_seconds_count", ids), 0) == 5 and v,
        what="5 delivery latencies",
    )
    assert latency[("iot_integration_delivery_latency_seconds_bucket", (*ids, ("le", "+Inf")))] == 5
    assert 0 < latency[("iot_integration_delivery_latency_seconds_sum", ids)] < 60
    # A target that refuses: the failure counts, and the counter moved from where it was.
    sink.responder = lambda request: (400, {"Content-Type": "text/plain"}, b"no")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "f_cnt": 99})
    wait_for(lambda: delivered(metrics(), "failed") == 1, what="the failure in the metrics")
    # The admin token only: an application key may not read every application's numbers.
    key = orchestrator.create_key(APP, "integrations:read")
    assert orchestrator.api is not None
    answer = orchestrator.api.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 403


def test_a_basic_auth_echo_is_masked_everywhere_it_could_show(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    import base64

    password = "s3cret-pass:word"
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    # A target that echoes the request's Authorization header, and refuses (so the answer is kept as an error).
    sent: list[str] = []

    def echo(request: Received) -> tuple[int, dict[str, str], bytes]:
        sent.append(request.headers.get("authorization", ""))
        return 400, {"Content-Type": "application/json"}, json.dumps({"you sent": sent[-1]}).encode()

    sink.responder = echo
    setup_app(orchestrator, "dev-1")
    config = {"url": sink.url, "auth_username": "alice", "auth_password": password}
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config=config)
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1})
    base = f"/api/v1/applications/{APP}/integrations/hook"
    errors = wait_for(lambda: orchestrator.call("GET", f"{base}/activity?kind=error", 200).json(), what="the error")
    tested = orchestrator.call("POST", f"{base}/test", 200, json={}).json()
    assert sent[0] == f"Basic {basic}"  # the target did get it
    history = orchestrator.call("GET", f"/api/v1/applications/{APP}/events/history?limit=1000", 200).text
    logs = orchestrator.call("GET", f"{base}/logs", 200).text
    for where, text in (
        ("activity", json.dumps(errors)),
        ("test", json.dumps(tested)),
        ("events", history),
        ("logs", logs),
    ):
        assert basic not in text and password not in text, where
    assert "you sent" in json.dumps(errors)  # the excerpt is there, masked


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({"url": "http://127.0.0.1:9/", "headers": {"X-V": "{{#x}}"}}, "config.headers", "invalid Mustache"),
        ({"url": "http://127.0.0.1:9/", "body_format": "raw", "body": "{{device_id"}, "config.body", "Mustache"),
        ({"url": "http://127.0.0.1:9/", "body_format": "json", "body": "{not json"}, "config.body", "not valid JSON"),
        ({"url": "http://127.0.0.1:9/", "headers": {"X-A": "one\r\nX-B: two"}}, "config.headers", "line break"),
        ({"url": "{{x}}file:///etc/passwd"}, "config.url", "http"),
        ({"url": "http://127.0.0.1:9/", "events": "up"}, "config.events", "unknown events"),
        ({"url": "http://127.0.0.1:9/", "ca_pem": "not a certificate"}, "config.ca_pem", "PEM"),
        ({"url": "http://127.0.0.1:9/", "response_template": "{{#a}}"}, "config.response_template", "Mustache"),
    ],
)
def test_what_the_worker_would_refuse_is_refused_at_creation(
    orchestrator: RunningOrchestrator, config: dict[str, Any], field: str, says: str
) -> None:
    setup_app(orchestrator)
    base = f"/api/v1/applications/{APP}/integrations"
    problem = orchestrator.call("POST", base, 422, json={"template_id": "webhook", "config": config}).json()
    assert [error["field"] for error in problem["errors"]] == [field], problem
    assert says in problem["errors"][0]["message"], problem
    validated = orchestrator.call("POST", f"{base}/validate", 200, json={"template_id": "webhook", "config": config})
    assert validated.json() == {"valid": False, "errors": problem["errors"]}
    assert orchestrator.call("GET", base, 200).json()["total"] == 0


def test_a_rendered_request_that_cannot_be_sent_fails_once(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    setup_app(orchestrator, "dev-1")
    # The host comes from the device: a value that makes no http URL fails that message at once, never retried.
    config = {"url": "http://{{{decoded_payload.host}}}/in"}
    orchestrator.create_integration(APP, id="hook", template_id="webhook", config=config)
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"host": ""}})
    counters = wait_for(
        lambda: (c := orchestrator.integration(APP, "hook")["counters"])["failed"] == 1 and c, what="one failure"
    )
    assert counters["retried"] == 0
    errors = orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations/hook/activity?kind=error", 200).json()
    assert "not an http(s) URL with a host" in errors[0]["message"]


def test_secret_headers_are_sent_but_never_shown(orchestrator: RunningOrchestrator, sink: HttpSink) -> None:
    setup_app(orchestrator, "dev-1")
    seen: list[Received] = []

    def refuse_and_echo(request: Received) -> tuple[int, dict[str, str], bytes]:
        seen.append(request)
        return 400, {"Content-Type": "text/plain"}, f"key was {request.headers.get('x-api-key')}".encode()

    sink.responder = refuse_and_echo
    secret = {"X-Api-Key": "sekret-{{device_id}}-7781"}
    config = {"url": sink.url, "headers": {"X-Plain": "visible"}, "secret_headers": secret}
    created = orchestrator.create_integration(APP, id="hook", template_id="webhook", config=config)
    assert "secret_headers" not in created["config"] and created["secrets_set"] == ["secret_headers"]
    assert created["config"]["headers"] == {"X-Plain": "visible"}
    orchestrator.wait_state(APP, "hook", "running")
    orchestrator.uplink(APP, "dev-1", {"f_port": 1})
    base = f"/api/v1/applications/{APP}/integrations/hook"
    errors = wait_for(lambda: orchestrator.call("GET", f"{base}/activity?kind=error", 200).json(), what="the error")
    assert seen[0].headers["x-api-key"] == "sekret-dev-1-7781" and seen[0].headers["x-plain"] == "visible"
    shown = json.dumps(
        [errors, orchestrator.integration(APP, "hook"), orchestrator.call("GET", f"{base}/logs", 200).json()]
    )
    assert "sekret" not in shown and "7781" not in shown
    assert "key was ***" in json.dumps(errors)  # the echo was reported, masked
    # A change elsewhere keeps the secret headers; an invalid one is refused without showing its value.
    orchestrator.call("PATCH", base, 200, json={"config": {"headers": {"X-Plain": "changed"}}})
    problem = orchestrator.call("PATCH", base, 422, json={"config": {"secret_headers": {"X-Key": "hidden-{{#x}}"}}})
    assert "hidden" not in problem.text and "X-Key" in problem.text
