"""Entry point of every worker image: read the configuration, run the worker, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

import uvloop
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from .errors import ConfigurationError
from .messages import describe_errors
from .mqtt import MqttConnection
from .redact import RedactingFilter, Redactor
from .settings import HandlerSettings, WorkerSettings
from .worker import Worker

log = logging.getLogger(__name__)
EXIT_BAD_CONFIGURATION = 2


def env_errors(settings_class: type[BaseSettings], err: ValidationError) -> list[str]:
    """Name each configuration problem by the environment variable at fault."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    problems = []
    for problem in describe_errors(err):
        field_name = problem["field"].split(".")[0]
        info = settings_class.model_fields.get(field_name)
        alias = info.validation_alias if info and isinstance(info.validation_alias, str) else None
        problems.append(f"{alias or (prefix + field_name).upper()}: {problem['message']}")
    return problems


def _load(settings_class: type[BaseSettings]) -> tuple[Any, list[str]]:
    try:
        return settings_class(), []
    except ValidationError as err:
        return None, env_errors(settings_class, err)


def _ignore_cancelled_acks(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    # A message handler cancelled at shutdown must stay unacknowledged; gmqtt logs that as an error.
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _report_bad_configuration(worker: Worker, problems: list[str]) -> None:
    # A connection of its own: resuming the worker's persistent session would hand this process the
    # messages waiting for the integration, and with no handler for them they would be acknowledged, lost.
    handler = worker.handler
    worker.mqtt = MqttConnection(
        handler.mqtt_url,
        worker.mqtt.client_id + "-config",
        username=handler.broker_username,
        password=handler.broker_password,
        persistent=False,
        ca_file=handler.ca_file,
    )
    try:
        await worker.mqtt.connect()
        await worker.report("error", "invalid configuration: " + "; ".join(problems), problems=problems)
        await worker.mqtt.disconnect()
    except Exception as err:  # the configuration error is what matters; it is in the log already
        log.debug("could not report the configuration error: %s", err)


async def _main(worker_class: type[Worker], handler: HandlerSettings, worker_settings: WorkerSettings) -> int:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_ignore_cancelled_acks)
    settings: Any = None
    problems: list[str] = []
    if worker_class.settings_class is not None:
        settings, problems = _load(worker_class.settings_class)
    worker = worker_class(settings, handler, worker_settings)
    if settings is not None or worker_class.settings_class is None:
        try:
            worker.configure()
        except ConfigurationError as err:
            problems = err.problems
    if problems:
        for problem in problems:
            log.error("invalid configuration: %s", problem)
        await _report_bad_configuration(worker, problems)
        return EXIT_BAD_CONFIGURATION
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    await worker.run()
    return 0


def run_worker(worker_class: type[Worker]) -> None:
    """Run a worker class as the main program of an image; exits 2 on bad configuration."""
    worker_settings, problems = _load(WorkerSettings)
    level = getattr(worker_settings, "log_level", "INFO") if worker_settings else "INFO"
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stdout,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for log_handler in logging.getLogger().handlers:
        log_handler.addFilter(RedactingFilter(Redactor.from_environment()))
    handler, handler_problems = _load(HandlerSettings)
    problems += handler_problems
    if problems:
        for problem in problems:
            log.error("invalid configuration: %s", problem)
        sys.exit(EXIT_BAD_CONFIGURATION)
    # uvloop's event loop moves messages and HTTP requests markedly faster than asyncio's own.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(_main(worker_class, handler, worker_settings)))
