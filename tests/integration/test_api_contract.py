"""The API keeps its OpenAPI contract: schemathesis against a running orchestrator finds no server error, no
status code, content type or header the document does not declare, and no answer that breaks its schema."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.config import PROJECT_ROOT
from tests.support.orchestrator import RunningOrchestrator

CONFIG = PROJECT_ROOT / "tests" / "support" / "schemathesis.toml"
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "response_headers_conformance",
        "unsupported_method",
        "allow_header_conformance",
    ]
)


def test_schemathesis_finds_no_server_error_and_nothing_undeclared(orchestrator: RunningOrchestrator) -> None:
    # Known ids (tests/support/schemathesis.toml), so operations reach their logic instead of a 404.
    orchestrator.create_application("contract-app")
    orchestrator.create_device("contract-app", "dev-1")
    orchestrator.create_integration(
        "contract-app", id="hook", template_id="webhook", config={"url": "http://127.0.0.1:9/"}
    )
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary is not None, "schemathesis is not installed: ./scripts/setup --dev installs it"
    command = [
        binary,
        "--config-file",
        str(CONFIG),
        "run",
        f"{orchestrator.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {orchestrator.token}",
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "15",
        "--exclude-path-regex",
        "/events$|^/v1/",  # the live event streams never end; the history beside them is tested
        "--request-timeout",
        "10",
        "--workers",
        "1",
        "--continue-on-failure",
        "--seed",
        "20261206",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1].lower(), result.stdout[
        -3000:
    ]
