"""The outbound policy with a real webhook worker: decided at creation for a host the URL names, and after
resolving a name at send time. Only loopback is ever contacted (closing loopback is how the send-time path is
tested without sending anything anywhere else)."""

from __future__ import annotations

from pathlib import Path

from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "outbound-app"


def test_cloud_metadata_is_refused_when_the_url_names_it(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    base = f"/api/v1/applications/{APP}/integrations"
    for url in ("http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/computeMetadata/v1/"):
        problem = orchestrator.call("POST", base, 422, json={"template_id": "webhook", "config": {"url": url}}).json()
        assert problem["errors"][0]["field"] == "config.url" and "cloud metadata" in problem["errors"][0]["message"]


def test_a_closed_network_is_refused_at_creation_and_after_resolving_a_name(
    tmp_path: Path, mosquitto: str, sink: HttpSink
) -> None:
    # An operator closes this machine's own services (loopback) to webhooks: the workers still reach the
    # handler, but no target on 127.0.0.1 gets a request, whether the URL says 127.0.0.1 or a name for it.
    closed = RunningOrchestrator(
        tmp_path / "closed", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_OUTBOUND__LOOPBACK="deny"
    ).start()
    try:
        closed.create_application(APP)
        closed.create_device(APP, "dev-1")
        base = f"/api/v1/applications/{APP}/integrations"
        problem = closed.call("POST", base, 422, json={"template_id": "webhook", "config": {"url": sink.url}}).json()
        assert "loopback" in problem["errors"][0]["message"], problem
        by_name = sink.url.replace("127.0.0.1", "localhost")
        closed.create_integration(APP, id="hook", template_id="webhook", config={"url": by_name})
        closed.wait_state(APP, "hook", "running")
        closed.uplink(APP, "dev-1", {"f_port": 1})
        counters = wait_for(
            lambda: (c := closed.integration(APP, "hook")["counters"])["failed"] == 1 and c, what="one failure"
        )
        assert counters["retried"] == 0 and sink.accepted() == []
        errors = closed.call("GET", f"{base}/hook/activity?kind=error", 200).json()
        assert "the outbound policy closes localhost" in errors[0]["message"] and "loopback" in errors[0]["message"]
    finally:
        closed.stop()
