"""The Pub/Sub image's configuration check: what its worker refuses at start (credentials that are no service
account key, unknown events, ...), run by the orchestrator before it accepts a configuration."""

from __future__ import annotations

from collections.abc import Mapping

from worker_sdk.settings import settings_problems

from .config import PubSubSettings


def check_environment(environment: Mapping[str, str]) -> list[tuple[str, str]]:
    """(environment variable, why) for each problem the worker would refuse at start."""
    return settings_problems(PubSubSettings, environment)
