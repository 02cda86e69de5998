"""Command line: `orchestrator serve` runs the service; `orchestrator templates validate` checks templates;
`orchestrator integrations import-particle` imports a Particle webhook through a running orchestrator's API."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote

import click
import uvicorn
from pydantic import ValidationError
from pythonjsonlogger.json import JsonFormatter

from .config import Settings
from .errors import OrchestratorError, TemplateFileError
from .templates import load_template, tts

if TYPE_CHECKING:
    from .wiring import Orchestrator

# Settings that were renamed or replaced: said at start, since unknown ORCH_* variables are otherwise ignored.
RENAMED_SETTINGS = {
    "ORCH_HANDLER__KEEPALIVE_SECONDS": "use ORCH_EVENTS__KEEPALIVE_SECONDS",
    "ORCH_HANDLER__EVENT_BUFFER_SIZE": "events are kept in the log: see ORCH_EVENTS__RETENTION_COUNT, "
    "ORCH_EVENTS__RETENTION_DAYS and ORCH_EVENTS__STREAM_REPLAY_COUNT",
}

log = logging.getLogger(__name__)


@click.group()
def main() -> None:
    """IoT integration orchestrator."""


@main.command()
@click.option("--host", help="Listen address (default ORCH_HOST or 127.0.0.1)")
@click.option("--port", type=int, help="Listen port (default ORCH_PORT or 8080)")
def serve(host: str | None, port: int | None) -> None:
    """Run the API, the handler, the broker (managed mode) and the reconciler."""
    from .app import create_app

    overrides = {key: value for key, value in (("host", host), ("port", port)) if value is not None}
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        for problem in err.errors():
            field = "ORCH_" + "__".join(str(part) for part in problem["loc"]).upper()
            click.echo(f"configuration error: {field}: {problem['msg']}", err=True)
        sys.exit(2)
    _configure_logging(settings)
    for old, instead in RENAMED_SETTINGS.items():
        if old in os.environ:
            log.warning("%s is no longer read; %s", old, instead)
    lock = _lock_data_dir(settings.data_dir)  # held until the process exits
    try:
        app = create_app(settings, start_with_app=False)
    except OrchestratorError as err:  # e.g. the database does not answer
        click.echo(f"cannot start: {err.detail}", err=True)
        sys.exit(2)
    token_file = settings.data_dir / "admin.token"
    if settings.admin_token is None:
        log.info("Admin token: in %s (export TOKEN=$(cat %s))", token_file, token_file)
    runtime = app.state.orchestrator.runtime
    log.info("Runtime: %s", runtime.name)
    # Workers in containers on a bridge network reach the API through Docker's bridge address.
    hosts = [settings.host] + ([] if settings.public_url else runtime.extra_listen_addresses())
    try:
        sockets = [_listen(host, settings.port) for host in dict.fromkeys(hosts)]
    except OSError as err:
        click.echo(f"cannot listen on port {settings.port}: {err.strerror} (set ORCH_PORT)", err=True)
        sys.exit(2)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # its loggers reach ours: one format for every line
    )
    try:
        failure = asyncio.run(_run(app.state.orchestrator, uvicorn.Server(config), sockets))
    except KeyboardInterrupt:  # uvicorn raises the signal again once it stopped: asked to stop, and stopped
        failure = None
    lock.close()
    if failure:
        click.echo(f"cannot start: {failure}", err=True)
        sys.exit(2)


async def _run(orchestrator: Orchestrator, server: uvicorn.Server, sockets: list[socket.socket]) -> str | None:
    """Start the orchestrator, then serve until a signal (the app stops it); returns why it could not start."""
    try:
        await orchestrator.start()
    except OrchestratorError as err:
        await orchestrator.stop()
        return err.detail
    # What start-up made (modules, templates, caches) lives as long as the process: out of the collector's sight,
    # a full collection walks only what came since. Walking it all paused every request ~100 ms, dozens of
    # times a minute under load (measured with gc.callbacks; after: ~20 ms).
    gc.collect()
    gc.freeze()
    await server.serve(sockets=sockets)
    return None


def _configure_logging(settings: Settings) -> None:
    """Lines of text, or one JSON object a line (ORCH_LOG_FORMAT=json) for log collectors."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def _lock_data_dir(data_dir: Path) -> IO[str]:
    """One orchestrator per data directory: two would share a broker and fight over the same workers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = (data_dir / "orchestrator.lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        click.echo(
            f"another orchestrator (pid {holder}) uses the data directory {data_dir}; stop it, or give this one "
            "its own ORCH_DATA_DIR",
            err=True,
        )
        sys.exit(2)
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP by name: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets whose protocol says
    # TCP, and accepted connections inherit it from here. With 0 every response waited ~40 ms for the client's
    # delayed acknowledgement of its headers before its body went out.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@main.command("echo-server")
@click.option("--port", type=int, default=9000, show_default=True)
@click.option("--reply", default='{"received": true}', show_default=True, help="JSON body of every answer")
def echo_server(port: int, reply: str) -> None:
    """A local HTTP endpoint that prints what it receives: a target for trying webhooks."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = reply.encode()

    class Echo(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            click.echo(f"{self.command} {self.path}\n{body.decode('utf-8', 'replace')}\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, *args: object) -> None:
            return

    click.echo(f"listening on http://127.0.0.1:{port}, answering {reply}")
    ThreadingHTTPServer(("127.0.0.1", port), Echo).serve_forever()


@main.group()
def templates() -> None:
    """Work with integration templates."""


@templates.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check template files (or every *.yaml in directories); exit 1 if any is broken."""
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    if not files:
        click.echo("no template files (*.yaml) found", err=True)
        sys.exit(1)
    broken = 0
    for file in files:
        try:
            template = load_template(file)
        except TemplateFileError as err:
            broken += 1
            click.echo(f"{file}: INVALID", err=True)
            for problem in err.problems:
                click.echo(f"  - {problem}", err=True)
            continue
        click.echo(
            f"{file}: ok ({template.name} {template.version}, image {template.image.reference}, "
            f"{len(template.fields)} fields)"
        )
    if broken:
        click.echo(f"{broken} of {len(files)} templates are invalid", err=True)
        sys.exit(1)


@templates.command("import-tts")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--output", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write to")
def import_tts(source: Path, output: Path) -> None:
    """Convert The Things Stack's webhook templates (a folder of its *.yml) into templates of ours; one line per
    file says what became of it; exit 1 only if a file is broken."""
    webhook_file = Settings().templates_dir / "webhook.yaml"
    webhook = load_template(webhook_file) if webhook_file.is_file() else None
    output.mkdir(parents=True, exist_ok=True)
    files = tts.template_files(source)
    if not files:
        click.echo(f"no template files (*.yml, *.yaml) in {source}", err=True)
        sys.exit(1)
    broken = imported = 0
    written: dict[str, str] = {}  # template id -> the file it came from
    for file in files:
        try:
            result = tts.read_file(file, webhook)
        except tts.BrokenTemplate as err:
            broken += 1
            click.echo(f"{file.name}: BROKEN: {err}", err=True)
            continue
        except tts.NotImportable as err:
            click.echo(f"{file.name}: not imported: {err}")
            continue
        if result.template.id in written:
            click.echo(
                f"{file.name}: not imported: template-id {result.template.id} came from {written[result.template.id]}"
            )
            continue
        written[result.template.id] = file.name
        target = output / f"{result.template.id}.yaml"
        target.write_text(tts.to_yaml(result, file.name), encoding="utf-8")
        imported += 1
        notes = f" ({'; '.join(result.notes)})" if result.notes else ""
        click.echo(f"{file.name}: imported as {target}{notes}")
    click.echo(f"{imported} imported, {len(files) - imported - broken} not imported, {broken} broken")
    if broken:
        sys.exit(1)


@main.group()
def integrations() -> None:
    """Work with a running orchestrator's integrations, through its API."""


@integrations.command("import-particle")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--application", "-a", required=True, help="Id of the application to add the integration to")
@click.option(
    "--api-url",
    envvar="ORCH_API_URL",
    show_envvar=True,
    default="http://127.0.0.1:8080",
    show_default=True,
    help="The orchestrator's address",
)
@click.option(
    "--key",
    envvar="ORCH_API_KEY",
    show_envvar=True,
    required=True,
    help="An application key with the manage scope, or the admin token",
)
def import_particle(file: Path, application: str, api_url: str, key: str) -> None:
    """Create a webhook integration from a Particle webhook definition (the JSON file `particle webhook create`
    takes). Prints the integration's id, or each refused field and why; exit 1 if refused, 2 if FILE is not
    readable JSON."""
    import requests  # only this command talks to an API

    try:
        definition = json.loads(file.read_bytes(), parse_constant=_not_json)
    except OSError as err:
        click.echo(f"{file}: cannot read it: {err.strerror or err}", err=True)
        sys.exit(2)
    except ValueError as err:  # not JSON, or not UTF-8
        click.echo(f"{file}: not JSON: {err}", err=True)
        sys.exit(2)
    key = key.strip()
    if not key.isascii() or not key.isprintable() or " " in key:  # requests would name the value in its error
        click.echo("the key has characters no key or token has (spaces, control characters)", err=True)
        sys.exit(2)
    url = f"{api_url.rstrip('/')}/api/v1/applications/{quote(application, safe='')}/integrations/import/particle"
    try:
        response = requests.post(url, json=definition, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        answer: Any = response.json()
    except requests.JSONDecodeError:  # e.g. a proxy's page, or the plain-text 413
        answer = None
    except requests.RequestException as err:
        click.echo(f"cannot reach the orchestrator at {api_url}: {err}", err=True)
        sys.exit(1)
    if response.status_code == 201 and isinstance(answer, dict):
        state = "enabled" if answer.get("enabled") else "disabled"
        click.echo(f"created: integration {answer.get('id')} in {application} ({state})")
        if answer.get("downlink_api_key"):
            click.echo(f"downlink key (shown this once): {answer['downlink_api_key']}")
        for note in answer.get("notes") or []:
            click.echo(f"note: {note}")
        return
    if isinstance(answer, dict) and isinstance(answer.get("errors"), list):
        for problem in answer["errors"]:
            click.echo(f"refused: {problem.get('field')}: {problem.get('message')}", err=True)
    elif isinstance(answer, dict) and "detail" in answer:
        click.echo(f"failed: {response.status_code} {answer.get('title', '')}: {answer['detail']}", err=True)
    else:
        click.echo(f"failed: {response.status_code} {response.text[:200]}", err=True)
    sys.exit(1)


def _not_json(constant: str) -> None:
    """Python reads NaN and Infinity, which JSON (and the API) does not have."""
    raise ValueError(f"{constant} is not a JSON value")


if __name__ == "__main__":
    main()
