"""Typed worker configuration from environment variables, as the orchestrator passes it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars


def check_mqtt_url(value: str) -> str:
    """The URL of an MQTT broker, or ValueError saying what one looks like."""
    parts = urlsplit(value)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
    return value


class HandlerSettings(BaseSettings):
    """How to reach the handler: set by the orchestrator for every worker (`HANDLER_*`)."""

    model_config = SettingsConfigDict(env_prefix="HANDLER_", extra="ignore")

    mqtt_url: str = Field(description="Broker URL, mqtt:// or mqtts://")
    api_url: str = Field(description="Handler HTTP API base URL")
    application_id: str
    api_key: SecretStr = Field(description="Application key scoped to this integration")
    mqtt_username: str | None = Field(None, description="Broker user; defaults to the key's id")
    mqtt_password: SecretStr | None = Field(None, description="Broker password; defaults to the key")
    ca_file: str | None = None
    downlink_api_key: SecretStr | None = Field(
        None, description="The key the integration's target pushes downlinks with (when its template asks for one)"
    )
    downlink_url: str | None = Field(
        None, description="Where the target pushes them: {device_id} filled in, then /push or /replace"
    )

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        return check_mqtt_url(value)

    @property
    def broker_username(self) -> str:
        """The broker user name: explicit, or the key id (`ik.ID.SECRET` -> `ik.ID`)."""
        if self.mqtt_username:
            return self.mqtt_username
        return ".".join(self.api_key.get_secret_value().split(".")[:2])

    @property
    def broker_password(self) -> str:
        """The broker password: explicit, or the application key itself."""
        secret = self.mqtt_password or self.api_key
        return secret.get_secret_value()


class WorkerSettings(BaseSettings):
    """Identity and delivery policy of this worker (`INTEGRATION_ID`, `WORKER_*`)."""

    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    integration_id: str = Field(validation_alias="INTEGRATION_ID")
    replica: int = Field(0, ge=0, description="Index of this replica; replicas share the messages")
    replicas: int = Field(1, ge=1)
    concurrency: int = Field(32, ge=1, le=1000, description="Messages handled at once")
    retry_initial_seconds: float = Field(1.0, gt=0)
    retry_max_delay_seconds: float = Field(60.0, gt=0)
    retry_max_duration_seconds: float = Field(3600.0, ge=0, description="0 retries for ever")
    stats_interval_seconds: float = Field(2.0, gt=0)
    shutdown_grace_seconds: float = Field(10.0, ge=0)
    dedupe_window: int = Field(
        50_000, ge=0, description="Messages remembered to recognise copies delivered again (0: none)"
    )
    event_prefix: str = Field(
        "", description="Only events whose name starts with this (a named event's name, else the event's own)"
    )
    devices: str = Field("", description="Comma-separated device ids: only their events; empty: every device")
    health_file: str = "/tmp/worker-health"
    log_level: str = "INFO"


class ImageSettings(BaseSettings):
    """Base class of an image's own configuration; subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(extra="ignore")


S = TypeVar("S", bound=BaseSettings)


def read_settings(settings_class: type[S], environment: Mapping[str, str]) -> S:
    """The settings as a worker with this environment reads them (pydantic-settings' own parsing: prefixes,
    aliases, JSON values), from `environment` only, never the calling process's own variables."""

    class GivenEnvironment(EnvSettingsSource):
        def _load_env_vars(self) -> Mapping[str, str | None]:
            return parse_env_vars(environment, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)

    class Reading(settings_class):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], **sources: PydanticBaseSettingsSource
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (GivenEnvironment(settings_cls),)

    return Reading()


def settings_problems(settings_class: type[BaseSettings], environment: Mapping[str, str]) -> list[tuple[str, str]]:
    """What a worker would refuse reading its settings from this environment: (environment variable, why)."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    try:
        read_settings(settings_class, environment)
    except ValidationError as err:
        problems = []
        for item in err.errors():
            name = str(item["loc"][0]) if item["loc"] else ""
            variable = name if name.isupper() else (prefix + name).upper() if name else prefix.rstrip("_")
            problems.append((variable, str(item["msg"]).removeprefix("Value error, ")))
        return problems
    return []
