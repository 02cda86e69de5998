"""A webhook template written in The Things Stack's format: imported by the CLI, offered by the gallery from
TTS's folder as it is, and run on the webhook image, sending a real HTTP sink what The Things Stack would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

APP = "tts-hooks"


def write_tts_folder(folder: Path, sink: HttpSink) -> None:
    """A folder as TTS's template repository holds it: templates and the index of their ids."""
    folder.mkdir()
    acme = {
        "template-id": "acme",
        "name": "Acme",
        "description": "Acme IoT platform",
        "logo-url": "https://acme.example/logo.png",
        "info-url": "https://acme.example",
        "fields": [
            {"id": "tenant", "name": "Tenant", "description": "Your tenant", "secret": False},
            {"id": "api-key", "name": "API key", "description": "From your profile", "secret": True},
        ],
        "format": "json",
        "headers": {"Authorization": "Token {api-key}", "X-Tenant": "{tenant}"},
        "create-downlink-api-key": True,
        "base-url": sink.url + "/hooks{/tenant}",
        "paths": {"uplink-message": "/up", "join-accept": "/join", "uplink-normalized": "/normalized"},
    }
    (folder / "acme.yml").write_text(yaml.safe_dump(acme, sort_keys=False))
    (folder / "templates.yml").write_text("- acme\n")


def orchestrator_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=60)


def test_a_tts_template_imports_validates_and_delivers_what_tts_would(
    tmp_path: Path, mosquitto: str, sink: HttpSink
) -> None:
    source = tmp_path / "lorawan-webhook-templates"
    write_tts_folder(source, sink)
    imported = orchestrator_cli("templates", "import-tts", str(source), "--output", str(tmp_path / "ours"))
    assert imported.returncode == 0, imported.stderr
    assert "acme.yml: imported as" in imported.stdout and "uplink-normalized is not produced here" in imported.stdout
    assert "templates.yml: not imported: a list, not a template" in imported.stdout
    validated = orchestrator_cli("templates", "validate", str(tmp_path / "ours"))
    assert validated.returncode == 0 and "acme.yaml: ok (Acme 1.0.0" in validated.stdout, validated.stderr
    (source / "broken.yml").write_text("template-id: [oops\n")
    assert orchestrator_cli("templates", "import-tts", str(source), "--output", str(tmp_path / "o2")).returncode == 1

    # The gallery reads TTS's folder as it is.
    orch = RunningOrchestrator(
        tmp_path / "o", ORCH_BROKER__MOSQUITTO_BINARY=mosquitto, ORCH_TTS_TEMPLATES_DIR=str(source)
    ).start()
    try:
        offered = orch.call("GET", "/api/v1/templates/acme", 200).json()
        assert offered["name"] == "Acme" and offered["logo"] == "https://acme.example/logo.png"
        assert orch.call("GET", "/api/v1/templates/webhook", 200).json()["id"] == "webhook"  # ours are there too
        orch.create_application(APP)
        orch.create_device(APP, "dev1")
        refused = orch.call(
            "POST", f"/api/v1/applications/{APP}/integrations", 422, json={"id": "acme", "template_id": "acme"}
        ).json()
        assert {problem["field"] for problem in refused["errors"]} == {"config.tenant", "config.api_key"}
        created = orch.create_integration(
            APP, id="acme", template_id="acme", config={"tenant": "t 1", "api_key": "k-123/x"}
        )
        downlink_key = created["downlink_api_key"]  # shown once
        assert downlink_key.startswith("ik.") and created["downlink_key_id"] in downlink_key
        orch.wait_state(APP, "acme", "running")

        uplink = orch.uplink(APP, "dev1", {"f_port": 1, "decoded_payload": {"temperature": 21.5}})["uplink"]
        join = orch.call("POST", f"/api/v1/applications/{APP}/devices/dev1/reports/join", 201, json={}).json()
        received = wait_for(lambda: len(sink.accepted()) >= 2 and sink.accepted(), what="two webhook requests")
        by_path = {request.path: request for request in received}
        assert set(by_path) == {"/hooks/t%201/up", "/hooks/t%201/join"}  # RFC 6570 {/tenant}, then the path
        for request in received:
            assert request.method == "POST"
            assert request.headers["authorization"] == "Token k-123/x" and request.headers["x-tenant"] == "t 1"
            assert request.headers["content-type"] == "application/json"
        assert by_path["/hooks/t%201/up"].json() == uplink  # the message as TTS sends it
        assert by_path["/hooks/t%201/join"].json() == join
        shown = json.dumps(orch.integration(APP, "acme"))
        assert "k-123" not in shown and "t 1" in shown and downlink_key not in shown

        # The platform pushes a downlink back as it would to The Things Stack; the device gets it.
        up = by_path["/hooks/t%201/up"]
        assert up.headers["x-downlink-apikey"] == downlink_key
        push_url = up.headers["x-downlink-push"]
        assert push_url == f"{orch.url}/api/v3/as/applications/{APP}/webhooks/acme/devices/dev1/down/push"
        assert up.headers["x-downlink-replace"] == push_url.removesuffix("/push") + "/replace"
        bearer = {"Authorization": f"Bearer {downlink_key}"}
        downlink = {"downlinks": [{"f_port": 15, "frm_payload": "vu8=", "priority": "NORMAL"}]}
        assert httpx.post(push_url, json=downlink, headers=bearer).status_code == 200
        sent = orch.uplink(APP, "dev1", {"f_port": 1})["downlink"]
        assert (sent["f_port"], sent["frm_payload"]) == (15, "vu8=")
        wrong_hook = push_url.replace("/webhooks/acme/", "/webhooks/other/")
        assert httpx.post(wrong_hook, json=downlink, headers=bearer).status_code == 404
        reading = httpx.get(f"{orch.url}/api/v1/applications/{APP}/devices", headers=bearer)
        assert reading.status_code == 403  # the downlink key can push downlinks, nothing else
        key_id = created["downlink_key_id"]
        kept = orch.call("DELETE", f"/api/v1/applications/{APP}/keys/{key_id}", 409).json()
        assert "downlink key of integration acme" in kept["detail"]  # it goes with its integration
        orch.call("DELETE", f"/api/v1/applications/{APP}/integrations/acme", 204)
        assert httpx.post(push_url, json=downlink, headers=bearer).status_code == 401  # revoked with it
    finally:
        orch.stop()
