"""What an integration's worker runs: its configuration checked against the template, and the worker spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..db.models import Integration
from ..errors import ValidationFailed
from ..runtime.base import Runtime, WorkerSpec
from ..secretbox import SecretBox
from ..templates import IntegrationTemplate, ResolvedConfig, check_values


def resolve(
    template: IntegrationTemplate,
    values: dict[str, Any],
    kept_secrets: dict[str, Any] | None = None,
    worker_environment: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """Check values against the template (and its image's own check); ValidationFailed lists every problem."""
    resolved, problems = check_values(template, values, kept_secrets, worker_environment)
    if problems:
        raise ValidationFailed(problems)
    return resolved


def check_replicas(template: IntegrationTemplate, replicas: int) -> None:
    """Refuse more replicas than the template's image can run side by side."""
    if replicas > template.max_replicas:
        message = f"the {template.name} integration runs at most {template.max_replicas} replica(s)"
        raise ValidationFailed([{"field": "replicas", "message": message}])


def build_spec(
    record: Integration, template: IntegrationTemplate, box: SecretBox, settings: Settings, runtime: Runtime
) -> WorkerSpec:
    """The worker spec: the template's image, the field environment, and how to reach the handler."""
    resolved = resolve(template, record.config, box.open(record.secrets_encrypted, {}), settings.worker_environment)
    key = box.open(record.key_encrypted)
    broker_url, api_url = runtime.worker_urls(settings.broker.url, settings.api_url)
    environment = {
        **resolved.environment,
        **settings.worker_environment,
        "HANDLER_MQTT_URL": settings.broker.worker_url or broker_url,
        "HANDLER_API_URL": settings.public_url or api_url,
        "HANDLER_APPLICATION_ID": record.application_id,
        "HANDLER_API_KEY": key,
        "INTEGRATION_ID": record.id,
    }
    secret_env = [*resolved.secret_env, "HANDLER_API_KEY"]
    if record.downlink_key_encrypted:  # the target pushes downlinks back (TTS's X-Downlink-* headers)
        public = settings.downlink_api_url or settings.public_url or settings.api_url
        base = f"{public.rstrip('/')}/api/v3/as/applications/{record.application_id}"
        environment["HANDLER_DOWNLINK_API_KEY"] = box.open(record.downlink_key_encrypted)
        environment["HANDLER_DOWNLINK_URL"] = f"{base}/webhooks/{record.id}/devices/{{device_id}}/down"
        secret_env.append("HANDLER_DOWNLINK_API_KEY")
    return WorkerSpec(
        name=record.runtime_name,
        application_id=record.application_id,
        integration_id=record.id,
        template_id=template.id,
        template_version=template.version,
        image=template.image.reference,
        python_module=template.image.python_module,
        environment=environment,
        secret_env=tuple(secret_env),
        replicas=record.replicas,
        memory_mb=record.resources.get("memory_mb", template.resources.memory_mb),
        cpus=record.resources.get("cpus", template.resources.cpus),
    )
