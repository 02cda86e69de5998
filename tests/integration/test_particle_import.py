"""A Particle webhook definition imported as an integration, by the API and by the CLI: it sends what Particle
sends, a refusal names each Particle field at fault, and secrets never come back."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
from click.testing import CliRunner

from orchestrator.cli import main
from tests.support.orchestrator import RunningOrchestrator, free_port
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "particle-import"
IMPORT = f"/api/v1/applications/{APP}/integrations/import/particle"
PASSWORD = "pw-Sup3rS3cret"
HEADER_SECRET = "hk-Sup3rS3cret"


def definition(url: str, **extra: Any) -> dict[str, Any]:
    """Particle's documented example, with a secret header, sent to `url`."""
    return {
        "eventName": "Metric",
        "url": url,
        "headers": {"X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}", "X-Api-Key": HEADER_SECRET},
        "auth": {"username": "USERNAME", "password": PASSWORD},
        "json": {"field1": "{{{indoorTemp}}}", "field2": "{{{outdoorTemp}}}", "created_at": "{{SPARK_PUBLISHED_AT}}"},
        **extra,
    }


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text and HEADER_SECRET not in text


def test_an_imported_particle_webhook_sends_what_particle_sends(
    orchestrator: RunningOrchestrator, sink: HttpSink
) -> None:
    orchestrator.create_application(APP)
    orchestrator.create_device(APP, "photon-1")
    key = orchestrator.create_key(APP, "manage")
    answer = httpx.post(
        orchestrator.url + IMPORT,
        json=definition(sink.url + "/metrics", name="Metrics"),
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert answer.status_code == 201, answer.text
    assert_no_secret(answer.text)
    created = answer.json()
    assert created["name"] == "Metrics" and created["template_id"] == "webhook" and created["enabled"] is True
    assert created["config"]["event_prefix"] == "Metric" and created["config"]["events"] == "publish"
    assert created["config"]["headers"] == {"X-Timestamp": "{{PARTICLE_PUBLISHED_AT}}"}
    assert created["secrets_set"] == ["auth_password", "secret_headers"]
    assert created["downlink_api_key"] is None
    assert_no_secret(json.dumps(orchestrator.integration(APP, created["id"])))
    orchestrator.wait_state(APP, created["id"], "running")

    publish = f"/api/v1/applications/{APP}/devices/photon-1/reports/publish"
    orchestrator.call("POST", publish, 201, json={"name": "Other", "data": "1"})  # not under the prefix
    sent = orchestrator.call(
        "POST", publish, 201, json={"name": "Metric/room1", "data": '{"indoorTemp": 21.5, "outdoorTemp": 3}'}
    ).json()
    received = wait_for(lambda: sink.accepted(), what="the webhook's request")
    request = received[0]
    assert (request.method, request.path) == ("POST", "/metrics")
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"USERNAME:{PASSWORD}".encode()).decode()
    assert request.headers["x-api-key"] == HEADER_SECRET
    assert request.headers["x-timestamp"] == sent["publish"]["published_at"]
    body = json.loads(request.body)
    assert (body["field1"], body["field2"], body["created_at"]) == (21.5, 3, sent["publish"]["published_at"])
    wait_for(lambda: orchestrator.integration(APP, created["id"])["counters"]["delivered"] == 1, what="delivered")
    assert len(sink.accepted()) == 1  # "Other" was left alone
    assert_no_secret(orchestrator.log_tail(400))


def test_a_refusal_names_each_particle_field(orchestrator: RunningOrchestrator) -> None:
    orchestrator.create_application(APP)
    bad = {
        **definition("http://example.com", form={"a": "1"}, mydevices=False, colour="red"),
        "headers": {"X-A": 1},
        "requestType": "FETCH",
    }
    refused = orchestrator.call("POST", IMPORT, 422, json=bad)
    assert refused.headers["content-type"] == "application/problem+json"
    errors = {problem["field"]: problem["message"] for problem in refused.json()["errors"]}
    assert set(errors) == {"colour", "json", "form", "mydevices", "headers.X-A", "requestType"}
    assert "other people's devices" in errors["mydevices"]
    assert_no_secret(refused.text)

    # What the template and the image refuse is said on the Particle field too.
    closed = orchestrator.call("POST", IMPORT, 422, json=definition("http://169.254.169.254/latest")).json()
    assert [problem["field"] for problem in closed["errors"]] == ["url"]
    assert "169.254.169.254" in closed["errors"][0]["message"]
    assert_no_secret(json.dumps(closed))

    # Every problem at once: the import's own (event) and the template's (url) in one answer.
    both = orchestrator.call("POST", IMPORT, 422, json={"event": "bad name", "url": "ftp://x"}).json()
    assert {problem["field"] for problem in both["errors"]} == {"event", "url"}

    not_an_object = orchestrator.call("POST", IMPORT, 422, json=[definition("http://example.com")]).json()
    assert not_an_object["errors"][0] == {"field": "(body)", "message": "must be a JSON object"}
    broken = orchestrator.call("POST", IMPORT, 422, content=b'{"event": ').json()
    assert broken["errors"][0]["field"] == "(body)" and "not valid JSON" in broken["errors"][0]["message"]
    assert orchestrator.call("GET", f"/api/v1/applications/{APP}/integrations", 200).json()["total"] == 0

    reader = orchestrator.create_key(APP, "integrations:read")
    denied = httpx.post(
        orchestrator.url + IMPORT, json=definition("http://example.com"), headers={"Authorization": f"Bearer {reader}"}
    )
    assert denied.status_code == 403 and "manage" in denied.json()["detail"]
    orchestrator.call("POST", IMPORT.replace(APP, "no-such-app"), 404, json=definition("http://example.com"))
    # As `curl -d @hook.json` sends it: a form content type, a JSON body.
    as_curl = orchestrator.call(
        "POST",
        IMPORT,
        201,
        content=json.dumps(definition("http://example.com")).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).json()
    assert as_curl["name"].startswith("Particle webhook: ")


def test_the_cli_imports_a_file_and_says_each_outcome(orchestrator: RunningOrchestrator, tmp_path: Path) -> None:
    orchestrator.create_application(APP)
    key = orchestrator.create_key(APP, "manage")
    env = {"ORCH_API_URL": orchestrator.url, "ORCH_API_KEY": key}
    runner = CliRunner()

    def run(file: Path, *options: str, **more_env: str) -> Any:
        command = ["integrations", "import-particle", str(file), "--application", APP, *options]
        result = runner.invoke(main, command, env={**env, **more_env})
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert_no_secret(result.output)
        return result

    good = tmp_path / "hook.json"
    good.write_text(json.dumps(definition("http://example.com/in", name="From the CLI", disabled=True)))
    created = run(good)
    assert created.exit_code == 0, created.output
    first, *notes = created.stdout.strip().splitlines()
    assert first.startswith("created: integration ") and first.endswith("(disabled)")
    assert notes == ["note: headers X-Api-Key: kept as secret headers (sealed, write-only)"]  # what became of them
    integration_id = created.stdout.split()[2]
    stored = orchestrator.integration(APP, integration_id)
    assert stored["name"] == "From the CLI" and stored["enabled"] is False
    assert stored["secrets_set"] == ["auth_password", "secret_headers"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**definition("http://example.com"), "mydevices": False, "colour": "red"}))
    refused = run(bad)
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == [
        "refused: colour: not a field of Particle webhook definitions that this import knows",
        "refused: mydevices: false selects public events of other people's devices, which do not exist here "
        "(every device of an application is its owner's): remove it or set it to true",
    ]

    not_json = tmp_path / "notes.txt"
    not_json.write_text("event: Metric\n")
    assert run(not_json).exit_code == 2
    assert run(tmp_path / "missing.json").exit_code == 2
    assert run(tmp_path).exit_code == 2  # a folder
    unauthorized = run(good, "--key", "ik.nope.nope")
    assert unauthorized.exit_code == 1 and unauthorized.stderr.startswith("failed: 401")
    away = run(good, "--api-url", f"http://127.0.0.1:{free_port()}")
    assert away.exit_code == 1 and away.stderr.startswith("cannot reach the orchestrator")
