"""The MQTT bridge's configuration check: what its worker refuses at start, run by the orchestrator before it
accepts a configuration."""

from __future__ import annotations

from collections.abc import Mapping

from worker_sdk.settings import settings_problems

from .config import BridgeSettings


def check_environment(environment: Mapping[str, str]) -> list[tuple[str, str]]:
    """(environment variable, why) for each problem the worker would refuse at start."""
    problems = settings_problems(BridgeSettings, environment)
    topic, downlinks = environment.get("MQTT_BRIDGE_TOPIC"), environment.get("MQTT_BRIDGE_DOWNLINK_TOPIC")
    if not problems and topic and downlinks and topic == downlinks:
        problems.append(("MQTT_BRIDGE_DOWNLINK_TOPIC", "must differ from MQTT_BRIDGE_TOPIC"))
    return problems
