"""Every shipped template validates; broken templates are rejected with messages that name the mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.config import PROJECT_ROOT
from orchestrator.errors import TemplateFileError
from orchestrator.templates import TemplateRegistry, check_values, load_template

TEMPLATES = PROJECT_ROOT / "integration_templates"
SHIPPED = sorted(TEMPLATES.glob("*.yaml"))

GOOD = """\
id: {id}
name: Example
description: An example.
version: 1.0.0
image:
  repository: iot-orchestrator/webhook
  tag: 0.1.0
fields:
  - id: url
    label: URL
    type: url
    required: true
    env: WEBHOOK_URL
"""


def write(tmp_path: Path, text: str, name: str = "example") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_template_is_valid(path: Path) -> None:
    template = load_template(path)
    assert template.id == path.stem


def test_there_is_a_generic_webhook_and_three_platform_presets() -> None:
    registry = TemplateRegistry(TEMPLATES).load()
    assert registry.broken == {}
    webhook_based = [t for t in registry.templates.values() if t.image.repository == "iot-orchestrator/webhook"]
    assert "webhook" in registry.templates
    assert len(webhook_based) >= 4


def test_cli_validates_the_shipped_directory() -> None:
    result = CliRunner().invoke(main, ["templates", "validate", str(TEMPLATES)])
    assert result.exit_code == 0, result.output
    assert result.output.count(": ok (") == len(SHIPPED)


def problems_of(tmp_path: Path, text: str, name: str = "example") -> list[str]:
    with pytest.raises(TemplateFileError) as caught:
        load_template(write(tmp_path, text, name))
    return caught.value.problems


def test_id_must_equal_the_file_name(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD.format(id="other"))
    assert problems == ["line 1: id: id 'other' must equal the file name 'example'"]


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, GOOD.format(id="example") + "  - id: [unclosed\n")
    assert problems == ["line 15: not valid YAML: expected ',' or ']', but got '<stream end>'"]


def test_every_mistake_is_reported_with_its_line(tmp_path: Path) -> None:
    text = GOOD.format(id="example").replace("type: url", "type: link").replace("version: 1.0.0", "version: one")
    text += "colour: blue\n"
    problems = problems_of(tmp_path, text)
    assert "line 4: version: must look like 1.2.0 (semantic version)" in problems
    assert any(p.startswith("line 11: fields[0].type:") and "'string'" in p for p in problems), problems
    assert "line 14: colour: unknown key (check the spelling)" in problems


def test_cross_field_mistakes(tmp_path: Path) -> None:
    text = (
        GOOD.format(id="example")
        + """\
  - id: url
    label: Again
    env: WEBHOOK_URL
  - id: token
    label: Token
    secret: true
    default: abc
    env: HANDLER_API_KEY
  - id: mode
    label: Mode
    enum: [a, b]
    default: c
    pattern: "[unclosed"
    env: MODE
environment:
  WEBHOOK_BODY: "${missing}"
"""
    )
    problems = "\n".join(problems_of(tmp_path, text))
    assert "duplicate field id 'url'" in problems
    assert "WEBHOOK_URL is already set by field url" in problems
    assert "a secret field cannot have a default" in problems
    assert "HANDLER_API_KEY is reserved for the orchestrator" in problems
    assert "invalid regular expression" in problems
    assert "${missing} names no field of this template" in problems


def test_cli_exits_1_and_names_the_problem(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.format(id="wrong"))
    result = CliRunner().invoke(main, ["templates", "validate", str(path)])
    assert result.exit_code == 1
    assert "INVALID" in result.output and "must equal the file name" in result.output


def test_a_broken_template_is_left_out_not_fatal(tmp_path: Path) -> None:
    write(tmp_path, GOOD.format(id="example"))
    write(tmp_path, GOOD.format(id="nope"), name="broken")
    registry = TemplateRegistry(tmp_path).load()
    assert list(registry.templates) == ["example"]
    assert "broken" in registry.broken


def test_values_are_checked_all_at_once() -> None:
    template = load_template(TEMPLATES / "webhook.yaml")
    _, problems = check_values(template, {"method": "FETCH", "timeout_seconds": "soon", "colour": "blue"})
    fields = {p["field"]: p["message"] for p in problems}
    assert set(fields) == {"config.url", "config.method", "config.timeout_seconds", "config.colour"}
    assert "required" in fields["config.url"]
    assert "POST" in fields["config.method"]
    assert "number" in fields["config.timeout_seconds"]
    assert "unknown field" in fields["config.colour"]


def test_a_nul_character_is_refused_where_an_environment_variable_cannot_hold_it() -> None:
    template = load_template(TEMPLATES / "webhook.yaml")
    _, problems = check_values(template, {"url": "http://127.0.0.1:9/", "body": "a\x00b"})
    assert problems == [{"field": "config.body", "message": "Body template must not contain a NUL character"}]
    _, problems = check_values(template, {"url": "http://127.0.0.1:9/", "headers": {"X-A": "a\x00b"}})
    assert problems == []  # inside JSON it is escaped, so it is fine


def test_environment_is_built_from_fields_and_fixed_values() -> None:
    template = load_template(TEMPLATES / "influxdb-v2.yaml")
    resolved, problems = check_values(
        template, {"url": "https://influx.example", "organization": 'my "org"', "bucket": "b", "token": "tok"}
    )
    assert problems == []
    env = resolved.environment
    assert env["WEBHOOK_URL"] == "https://influx.example/api/v2/write"
    # Structured fixed values are JSON-encoded after substitution, so quotes in values stay valid JSON.
    assert env["WEBHOOK_QUERY"] == '{"org":"my \\"org\\"","bucket":"b","precision":"ns"}'
    assert env["WEBHOOK_AUTH_TOKEN"] == "tok"
    assert resolved.secrets == {"token": "tok"} and "token" not in resolved.public
    assert resolved.secret_env == ["WEBHOOK_AUTH_TOKEN"]


def test_secret_substituted_into_fixed_env_marks_it_secret() -> None:
    template = load_template(TEMPLATES / "thingspeak.yaml")
    resolved, problems = check_values(template, {"write_api_key": "ABCDEFGHIJKLMNOP"})
    assert problems == []
    assert resolved.secret_env == ["WEBHOOK_HEADERS"]
    _, problems = check_values(template, {"write_api_key": "short"})
    assert problems[0]["field"] == "config.write_api_key" and "pattern" in problems[0]["message"]


def test_omitted_secret_keeps_the_stored_value() -> None:
    template = load_template(TEMPLATES / "ubidots.yaml")
    resolved, problems = check_values(template, {}, kept_secrets={"token": "BBFF-123"})
    assert problems == []
    assert resolved.environment["WEBHOOK_AUTH_TOKEN"] == "BBFF-123"


def test_a_logo_must_be_a_file_inside_the_templates_folder(tmp_path: Path) -> None:
    folder = tmp_path / "templates"
    folder.mkdir()
    (tmp_path / "secret.svg").write_text("<svg/>")
    outside = GOOD.format(id="example").replace("version: 1.0.0", "version: 1.0.0\nlogo: ../secret.svg")
    assert any("outside the templates folder" in p for p in problems_of(folder, outside))
    missing = GOOD.format(id="example").replace("version: 1.0.0", "version: 1.0.0\nlogo: logos/none.svg")
    assert any("logo file logos/none.svg not found" in p for p in problems_of(folder, missing))
