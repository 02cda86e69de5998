"""Load and check template files, with messages that name the file, the line and the mistake."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import NotFoundError, TemplateFileError
from .models import PLACEHOLDER, IntegrationTemplate
from .tts import BrokenTemplate, NotImportable, read_file, template_files
from .values import FieldProblem, coerce, load_check, uri_parts, uri_variables

log = logging.getLogger(__name__)

# Variables the orchestrator sets for every worker; a template may not set them.
RESERVED_ENV = re.compile(
    r"^(HANDLER_.*|INTEGRATION_ID|WORKER_REPLICAS?|WORKER_SECRET_ENV|WORKER_HEALTH_FILE|WORKER_OUTBOUND_POLICY)$"
)


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at a pydantic error path, or of its closest parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def _where(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(file)"


def _cross_checks(template: IntegrationTemplate, path: Path) -> list[tuple[tuple[Any, ...], str]]:
    """Checks that involve several parts of a template (pydantic checks each part alone)."""
    problems: list[tuple[tuple[Any, ...], str]] = []
    if template.id != path.stem:
        problems.append((("id",), f"id {template.id!r} must equal the file name {path.stem!r}"))
    seen_ids: set[str] = set()
    seen_env: dict[str, str] = {name: "environment" for name in template.environment}
    for name in template.uri_environment:
        if name in seen_env:
            problems.append((("uri_environment", name), f"{name} is already set by environment"))
        seen_env[name] = "uri_environment"
    for index, spec in enumerate(template.fields):
        where = ("fields", index)
        if spec.id in seen_ids:
            problems.append(((*where, "id"), f"duplicate field id {spec.id!r}"))
        seen_ids.add(spec.id)
        if spec.env:
            if spec.env in seen_env:
                problems.append(((*where, "env"), f"{spec.env} is already set by {seen_env[spec.env]}"))
            seen_env[spec.env] = f"field {spec.id}"
            if RESERVED_ENV.match(spec.env):
                problems.append(((*where, "env"), f"{spec.env} is reserved for the orchestrator"))
        if spec.pattern is not None:
            try:
                re.compile(spec.pattern)
            except re.error as err:
                problems.append(((*where, "pattern"), f"invalid regular expression: {err}"))
                continue
        if (spec.minimum is not None or spec.maximum is not None) and spec.type not in ("integer", "number"):
            problems.append(((*where, "type"), "minimum and maximum need an integer or number field"))
            continue
        if spec.secret and spec.default is not None:
            problems.append(((*where, "default"), "a secret field cannot have a default"))
        if spec.required and spec.default is not None:
            problems.append(((*where, "required"), "a required field with a default is never required"))
        for value_index, value in enumerate(spec.enum or []):
            try:
                coerce(spec.model_copy(update={"enum": None, "pattern": None}), value)
            except FieldProblem as err:
                problems.append(((*where, "enum", value_index), f"{value!r} {err} (type {spec.type})"))
        if spec.default is not None:
            try:
                coerce(spec, spec.default)
            except FieldProblem as err:
                problems.append(((*where, "default"), f"default {spec.default!r} {err}"))
        if not spec.env and not _referenced(template, spec.id):
            problems.append((where, f"field {spec.id!r} has no env and no ${{{spec.id}}} in environment"))
    field_ids = {spec.id for spec in template.fields}
    for name, uri in template.uri_environment.items():
        sources = uri.values() if isinstance(uri, dict) else [uri]
        if any(not _balanced(source) for source in sources):
            problems.append((("uri_environment", name), "not an RFC 6570 template: a { without its } (or nested)"))
        for ref in uri_variables(uri):
            if ref not in field_ids:
                problems.append((("uri_environment", name), f"{{{ref}}} names no field of this template"))
    for name, value in [*template.environment.items(), *template.uri_environment.items()]:
        if not re.match(r"^[A-Z][A-Z0-9_]*$", name):
            problems.append((("environment", name), f"{name!r} is not a valid environment variable name"))
        elif RESERVED_ENV.match(name):
            problems.append((("environment", name), f"{name} is reserved for the orchestrator"))
        for ref in _placeholders(value) if name in template.environment else []:
            if ref not in seen_ids:
                problems.append((("environment", name), f"${{{ref}}} names no field of this template"))
    if template.check is not None:
        try:
            load_check(template.check)
        except (ImportError, AttributeError) as err:
            problems.append(
                (("check",), f"{template.check} cannot be loaded here ({err}); install the image's package")
            )
    local_logo = template.logo and not template.logo.startswith(("http://", "https://"))
    logo_file = (path.parent / str(template.logo)).resolve()
    if local_logo and not logo_file.is_relative_to(path.parent.resolve()):
        problems.append((("logo",), f"logo file {template.logo} is outside the templates folder"))
    elif local_logo and not logo_file.is_file():
        problems.append((("logo",), f"logo file {template.logo} not found next to the template"))
    return problems


def _placeholders(value: Any) -> list[str]:
    if isinstance(value, str):
        return PLACEHOLDER.findall(value)
    if isinstance(value, dict):
        return [ref for item in value.values() for ref in _placeholders(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _placeholders(item)]
    return []


def _referenced(template: IntegrationTemplate, field_id: str) -> bool:
    return any(field_id in _placeholders(value) for value in template.environment.values()) or any(
        field_id in uri_variables(uri) for uri in template.uri_environment.values()
    )


def _balanced(source: str) -> bool:
    """True when every `{` of an RFC 6570 template closes before the next one opens (webhook tags aside)."""
    depth = 0
    for char in "".join(part for part, is_tag in uri_parts(source) if not is_tag):
        if char in "{}":
            depth += 1 if char == "{" else -1
            if depth not in (0, 1):
                return False
    return depth == 0


def load_template(path: Path) -> IntegrationTemplate:
    """Load one template file; raises TemplateFileError listing every mistake with its line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise TemplateFileError(str(path), [f"cannot read: {err.strerror}"]) from err
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise TemplateFileError(str(path), [f"{where}not valid YAML: {getattr(err, 'problem', err)}"]) from err
    if not isinstance(data, dict):
        raise TemplateFileError(str(path), ["the file must hold a mapping (id, name, image, fields, ...)"])
    try:
        template = IntegrationTemplate.model_validate(data)
    except ValidationError as err:
        problems = []
        for item in err.errors(include_url=False):
            loc = tuple(item["loc"])
            line = _line_of(root, loc)
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "extra_forbidden":
                message = "unknown key (check the spelling)"
            problems.append(f"line {line}: {_where(loc)}: {message}" if line else f"{_where(loc)}: {message}")
        raise TemplateFileError(str(path), problems) from err
    cross = _cross_checks(template, path)
    if cross:
        raise TemplateFileError(str(path), [f"line {_line_of(root, loc)}: {_where(loc)}: {msg}" for loc, msg in cross])
    return template


class TemplateRegistry:
    """Every template from the templates directory, by id."""

    def __init__(
        self, directory: Path, worker_environment: Mapping[str, str] | None = None, tts_directory: Path | None = None
    ) -> None:
        self.directory = directory
        self.tts_directory = tts_directory  # The Things Stack's templates, converted on load
        # What the orchestrator gives every worker besides a template's variables (images' checks see it).
        self.worker_environment = dict(worker_environment or {})
        self.templates: dict[str, IntegrationTemplate] = {}
        self.broken: dict[str, list[str]] = {}

    def load(self) -> TemplateRegistry:
        """(Re)load all `*.yaml` files; broken ones are logged and left out, not fatal."""
        templates: dict[str, IntegrationTemplate] = {}
        broken: dict[str, list[str]] = {}
        for path in sorted(self.directory.glob("*.yaml")):
            try:
                template = load_template(path)
            except TemplateFileError as err:
                broken[path.stem] = err.problems
                log.error("template %s is broken and was not loaded: %s", path.name, "; ".join(err.problems))
                continue
            templates[template.id] = template
        if self.tts_directory is not None:
            self._load_tts(templates, broken)
        self.templates, self.broken = templates, broken
        log.info("loaded %d integration templates from %s", len(templates), self.directory)
        return self

    def _load_tts(self, templates: dict[str, IntegrationTemplate], broken: dict[str, list[str]]) -> None:
        """Add The Things Stack's templates from their folder; one of ours with the same id wins."""
        assert self.tts_directory is not None
        if not self.tts_directory.is_dir():
            log.error(
                "ORCH_TTS_TEMPLATES_DIR %s is not a folder: no templates of The Things Stack's", self.tts_directory
            )
            return
        count = 0
        for path in template_files(self.tts_directory):
            try:
                imported = read_file(path, templates.get("webhook"))
            except BrokenTemplate as err:
                broken[path.stem] = [str(err)]
                log.error("The Things Stack's template %s is broken and was not loaded: %s", path.name, err)
                continue
            except NotImportable as err:
                log.info("The Things Stack's template %s is not offered: %s", path.name, err)
                continue
            if imported.template.id in templates:
                log.warning(
                    "The Things Stack's template %s is not offered: template %s is there already (ours, "
                    "or an earlier file's)",
                    path.name,
                    imported.template.id,
                )
                continue
            templates[imported.template.id] = imported.template
            count += 1
        log.info("loaded %d of The Things Stack's templates from %s", count, self.tts_directory)

    def get(self, template_id: str) -> IntegrationTemplate:
        """The template with this id; NotFoundError otherwise."""
        template = self.templates.get(template_id)
        if template is None:
            raise NotFoundError("template", template_id)
        return template

    def images(self) -> set[str]:
        """Image references of every registered template (only these may be started)."""
        return {template.image.reference for template in self.templates.values()}

    def logo_path(self, template_id: str) -> Path | None:
        """The local logo file of a template, if it has one."""
        template = self.get(template_id)
        if not template.logo or template.logo.startswith(("http://", "https://")):
            return None
        folder = self.directory.resolve()
        path = (folder / template.logo).resolve()
        return path if path.is_relative_to(folder) else None  # never a file outside the templates folder
