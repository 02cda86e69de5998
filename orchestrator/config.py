"""All orchestrator settings in one pydantic-settings class (`ORCH_*`, nested with `__`)."""

from __future__ import annotations

import ipaddress
import secrets
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker_sdk.outbound import ENVIRONMENT_VARIABLE as OUTBOUND_VARIABLE
from worker_sdk.outbound import OutboundPolicy

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "admin", "password", "token"}


class BrokerSettings(BaseModel):
    """The MQTT broker the handler, every worker and every device use; accounts by its dynamic security plugin."""

    mode: Literal["managed", "external"] = Field(
        "managed", description="managed: the orchestrator runs Mosquitto itself; external: use `url`"
    )
    url: str = Field(
        "mqtt://127.0.0.1:1883",
        description="Broker URL as the orchestrator reaches it (managed: its plain listener, on this host)",
    )
    worker_url: str | None = Field(None, description="Broker URL as workers reach it; default `url`")
    ca_file: FilePath | None = Field(None, description="CA certificate for an mqtts:// `url` (default: the system's)")
    username: str = Field("orchestrator", min_length=1, description="The orchestrator's admin account on the broker")
    password: SecretStr | None = Field(
        None, description="Its password (secret); managed: generated once into the data directory if unset"
    )
    tenant: str | None = Field(
        None,
        pattern=r"^[a-z0-9](?:[-]?[a-z0-9]){1,35}$",
        description="The Things Stack tenant: application login keys also log in as `{app}@{tenant}`",
    )
    dynsec_plugin: Path | None = Field(None, description="Managed: mosquitto_dynamic_security.so (default: found)")
    listen_host: str = Field("0.0.0.0", description="Managed: the address of the TLS and secure WebSockets listeners")
    tls_port: int = Field(8883, ge=1, le=65535, description="Managed: MQTT over TLS, when a certificate is set")
    tls_cert_file: Path | None = Field(None, description="Managed: PEM certificate (chain) of the TLS listeners")
    tls_key_file: Path | None = Field(None, description="Managed: its PEM private key")
    websockets_port: int = Field(8083, ge=0, le=65535, description="Managed: MQTT over WebSockets on loopback (0: off)")
    websockets_tls_port: int = Field(
        8084, ge=0, le=65535, description="Managed: MQTT over secure WebSockets, when a certificate is set (0: off)"
    )
    mosquitto_binary: str = "mosquitto"
    max_queued_messages: int = Field(1_000_000, description="Per-session queue while a worker is away")

    @model_validator(mode="after")
    def _check(self) -> BrokerSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            missing = "tls_key_file" if self.tls_key_file is None else "tls_cert_file"
            raise ValueError(f"ORCH_BROKER__{missing.upper()} must be set too: TLS needs a certificate and its key")
        if self.mode == "managed" and not self.url.startswith("mqtt://"):
            raise ValueError(
                "ORCH_BROKER__URL must be mqtt://host:port in managed mode: it is the managed broker's plain "
                "listener (TLS comes with ORCH_BROKER__TLS_CERT_FILE)"
            )
        if self.mode == "external" and self.password is None:
            raise ValueError("ORCH_BROKER__PASSWORD must be set in external mode: the admin account's password")
        return self


class HandlerSettings(BaseModel):
    """Behaviour of the device side."""

    receive_maximum: int = Field(
        4096,
        ge=16,
        le=65535,
        description="Messages the broker may hand the orchestrator before its acknowledgements: a large window "
        "keeps device uplinks out of the broker's memory, where a crash would lose them",
    )
    downlink_queue_size: int = Field(16, ge=1, le=256)
    downlink_ttl_seconds: int = Field(86400, ge=1, description="Queued downlinks fail after this")
    max_downlink_bytes: int = Field(242, ge=1, description="A LoRaWAN downlink's payload (class A, unnamed)")
    max_named_downlink_bytes: int = Field(
        1024, ge=1, description="A named downlink's payload: an event for a connected device (Particle: 1024)"
    )
    max_message_bytes: int = Field(
        131_072, ge=1024, le=16_777_216, description="Uplinks and downlink requests larger than this are refused"
    )
    max_json_depth: int = Field(32, ge=4, le=512, description="Messages whose JSON nests deeper are refused")


class EventSettings(BaseModel):
    """The durable event log: what is kept, per application, for the event stream and the history API."""

    retention_count: int = Field(100_000, ge=100, description="Newest events kept per application")
    retention_days: float = Field(7.0, gt=0, description="Events older than this are removed")
    prune_interval_seconds: float = Field(60.0, gt=0, description="How often retention runs")
    keepalive_seconds: float = Field(15.0, gt=0, le=15, description="Keep-alive comment interval of event streams")
    stream_replay_count: int = Field(
        100, ge=0, le=10_000, description="Recent events an event stream opened with ?replay=true starts with"
    )


class DockerSettings(BaseModel):
    """The Docker runtime."""

    network: str = Field(
        "iot-orchestrator",
        description="User-defined bridge network (created if missing), or `host` (used by the tests)",
    )


class KubernetesSettings(BaseModel):
    """The Kubernetes runtime (docs/kubernetes.md)."""

    namespace: str | None = Field(
        None, description="Where workers run; default: the orchestrator's own (in a pod), the kubeconfig's, default"
    )
    kubeconfig: Path | None = Field(
        None, description="A kubeconfig file; default: the pod's service account, else KUBECONFIG or ~/.kube/config"
    )
    context: str | None = Field(None, description="The kubeconfig context to use")
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for a private registry")


class OutboundSettings(BaseModel):
    """Where workers may send requests (docs/webhook.md#where-requests-may-go). Cloud metadata and link-local
    addresses are always closed; a denied request fails at once, naming the rule."""

    private_networks: Literal["allow", "deny"] = Field("allow", description="10/8, 172.16/12, 192.168/16, ...")
    loopback: Literal["allow", "deny"] = Field("allow", description="127.0.0.0/8 and ::1: this machine's services")
    allow: list[str] = Field(default_factory=list, description="Networks (CIDR) open even inside a closed range")
    deny: list[str] = Field(default_factory=list, description="More networks (CIDR) to close")

    @field_validator("allow", "deny")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError as err:
                raise ValueError(f"{item!r} is not a network (CIDR) such as 10.1.0.0/16: {err}") from err
        return value

    @property
    def policy(self) -> OutboundPolicy:
        """The policy workers enforce."""
        return OutboundPolicy.build(
            private=self.private_networks == "allow",
            loopback=self.loopback == "allow",
            allow=self.allow,
            deny=self.deny,
        )


class RuntimeSettings(BaseModel):
    """Where and how integration workers run."""

    kind: Literal["auto", "process", "docker", "kubernetes"] = Field(
        "auto", description="auto: Kubernetes in a pod, else Docker if it answers, else processes"
    )
    reconcile_interval_seconds: float = Field(5.0, gt=0)
    restart_backoff_initial_seconds: float = Field(1.0, gt=0)
    restart_backoff_max_seconds: float = Field(300.0, gt=0)
    stable_after_seconds: float = Field(60.0, gt=0, description="Running this long resets the back-off")
    stop_timeout_seconds: float = Field(15.0, gt=0)
    log_max_bytes: int = Field(1_000_000, description="Process runtime: log file size before rotation")
    process_dir: Path | None = Field(
        None,
        description="Process runtime: where workers' records and logs live (default data_dir/process); "
        "instances on one host share it, so the leader adopts the workers another instance started",
    )
    docker: DockerSettings = DockerSettings()
    kubernetes: KubernetesSettings = KubernetesSettings()


class Settings(BaseSettings):
    """Everything configurable, from the environment (`ORCH_PORT`, `ORCH_BROKER__URL`, ...)."""

    model_config = SettingsConfigDict(env_prefix="ORCH_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    public_url: str | None = Field(None, description="API URL workers use; default http://host:port")
    data_dir: Path = Field(Path(".orchestrator"), description="Database, broker files, logs, keys")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir")
    admin_token: SecretStr | None = Field(None, description="API admin token; generated in development")
    secret_key: SecretStr | None = Field(None, description="Fernet key for secrets at rest")
    templates_dir: Path = PROJECT_ROOT / "integration_templates"
    downlink_api_url: str | None = Field(
        None,
        description="The API's address as webhook platforms on the internet reach it, for the X-Downlink-Push and "
        "X-Downlink-Replace URLs; default ORCH_PUBLIC_URL",
    )
    tts_templates_dir: Path | None = Field(
        None,
        description="A folder of The Things Stack's webhook templates (a checkout of TheThingsNetwork/"
        "lorawan-webhook-templates as it is): each is converted on load and shown in the gallery too",
    )
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object a line")
    lease_seconds: float = Field(
        10.0,
        ge=3,
        le=120,
        description="The leader's lease: another instance takes over within about 1.3 times this after it dies",
    )
    dead_letters_per_integration: int = Field(
        1000, ge=1, le=1_000_000, description="Dead letters kept per integration; past it, the oldest go"
    )
    broker: BrokerSettings = BrokerSettings()
    handler: HandlerSettings = HandlerSettings()
    events: EventSettings = EventSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    outbound: OutboundSettings = OutboundSettings()

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment == "production":
            for name in ("admin_token", "secret_key"):
                value = getattr(self, name)
                if value is None:
                    raise ValueError(f"ORCH_{name.upper()} must be set in production")
                if value.get_secret_value().lower() in PLACEHOLDER_SECRETS:
                    raise ValueError(f"ORCH_{name.upper()} is a placeholder; set a real secret")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        """The database URL, SQLite inside the data directory unless set."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'orchestrator.db').resolve()}"

    @cached_property
    def api_url(self) -> str:
        """The API URL workers are given."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return self.public_url or f"http://{host}:{self.port}"

    @cached_property
    def worker_environment(self) -> dict[str, str]:
        """What every worker gets from the orchestrator beyond its template's variables that an image's own
        check must see too: the outbound policy."""
        return {OUTBOUND_VARIABLE: self.outbound.policy.to_json()}

    @cached_property
    def instance_id(self) -> str:
        """This orchestrator's identity (kept in the data directory): its containers carry it as a label."""
        return self.persistent_secret("instance.id", None, factory="short")

    def persistent_secret(self, name: str, configured: SecretStr | None, factory: str = "token") -> str:
        """A configured secret, or one generated once and kept in the data directory (development)."""
        if configured is not None:
            return configured.get_secret_value()
        path = self.data_dir / name
        if path.exists():
            return path.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if factory == "short":
            value = secrets.token_hex(4)
        elif factory == "fernet":
            from cryptography.fernet import Fernet

            value = Fernet.generate_key().decode()
        else:
            value = secrets.token_urlsafe(32)
        path.touch(mode=0o600)
        path.write_text(value + "\n")
        return value
