"""docs/writing-an-image.md works as written: its files make an image that the orchestrator runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import RunningOrchestrator
from tests.support.sink import HttpSink
from tests.support.waiting import wait_for

GUIDE = PROJECT_ROOT / "docs" / "writing-an-image.md"
APP = "guide-app"


def files_of_the_guide() -> dict[str, str]:
    """Each code block preceded by `<!-- file: PATH -->`, by path."""
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    return dict(blocks)


def test_the_guide_builds_a_working_image(tmp_path: Path, mosquitto: str, sink: HttpSink) -> None:
    files = files_of_the_guide()
    assert {"images/acme/pyproject.toml", "integration_templates/acme.yaml"} <= files.keys()
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    # What images/Dockerfile needs: the folder's package declares `<folder>-worker`.
    project = tomllib.loads(files["images/acme/pyproject.toml"])
    assert project["project"]["scripts"]["acme-worker"] == "acme_worker.__main__:main"

    validate = subprocess.run(
        [sys.executable, "-m", "orchestrator", "templates", "validate", str(tmp_path / "integration_templates")],
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stdout + validate.stderr

    python_path = os.pathsep.join(filter(None, [str(tmp_path / "images" / "acme"), os.environ.get("PYTHONPATH")]))
    orch = RunningOrchestrator(
        tmp_path / "o",
        ORCH_BROKER__MOSQUITTO_BINARY=mosquitto,
        ORCH_TEMPLATES_DIR=str(tmp_path / "integration_templates"),
        PYTHONPATH=python_path,
    ).start()
    try:
        orch.create_application(APP)
        orch.create_device(APP, "dev-1")
        # Acme refuses readings of one value and answers 503 once, to show both kinds of error.
        answers = iter([503])
        sink.responder = lambda request: (
            (400, {}, b"temperature out of range")
            if request.json().get("temperature", 0) > 100
            else (next(answers, 201), {}, b"")
        )
        created = orch.create_integration(
            APP, id="acme", template_id="acme", config={"url": sink.url + "/v1", "api_key": "acme-key-1"}
        )
        assert created["secrets_set"] == ["api_key"] and "acme-key-1" not in str(created)
        orch.wait_state(APP, "acme", "running", timeout=60)

        orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"temperature": 21.5}})
        orch.uplink(APP, "dev-1", {"f_port": 1, "decoded_payload": {"temperature": 999}})
        (reading,) = wait_for(sink.accepted, timeout=60, what="the reading at Acme")
        assert reading.path == "/v1/devices/dev-1/readings"
        assert reading.headers["x-api-key"] == "acme-key-1"
        assert reading.json() == {"temperature": 21.5}
        counters = wait_for(
            lambda: (c := orch.integration(APP, "acme")["counters"])["failed"] == 1 and c["delivered"] == 1 and c,
            timeout=60,
            what="one delivered and one failed reading",
        )
        assert counters["retried"] >= 1  # the 503 was retried
        errors = orch.call("GET", f"/api/v1/applications/{APP}/integrations/acme/activity?kind=error").json()
        assert "temperature out of range" in errors[0]["message"]
    finally:
        orch.stop()
