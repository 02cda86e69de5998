"""Database tables (SQLAlchemy 2): applications, keys, devices, downlinks, integrations, activity, the event log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back timezone-aware UTC (SQLite forgets the zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    """Base of every table."""


class Application(Base):
    """An application: a set of devices and the integrations that forward their data."""

    __tablename__ = "applications"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiKey(Base):
    """An application key: `ik.<id>.<secret>`; hashes, and a copy sealed with the secret key for the broker."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret_hash: Mapped[str] = mapped_column(String(128))
    mqtt_password_hash: Mapped[str] = mapped_column(String(256))
    key_sealed: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: made before broker accounts
    application_login: Mapped[bool] = mapped_column(Boolean, default=False)  # the MQTT login `{application id}`
    integration_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Device(Base):
    """A device in an application's registry."""

    __tablename__ = "devices"

    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    dev_eui: Mapped[str | None] = mapped_column(String(16), nullable=True)
    join_eui: Mapped[str | None] = mapped_column(String(16), nullable=True)
    attributes: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class QueuedDownlink(Base):
    """A downlink waiting for its device's next uplink (class A), or its final state."""

    __tablename__ = "downlinks"
    __table_args__ = (Index("ix_downlinks_device_state", "application_id", "device_id", "state"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(36))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    queued_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class Integration(Base):
    """An integration: a template, its configuration, the desired state and what the runtime reports."""

    __tablename__ = "integrations"

    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    template_id: Mapped[str] = mapped_column(String(36))
    template_version: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    secrets_encrypted: Mapped[str] = mapped_column(Text, default="")
    key_id: Mapped[str] = mapped_column(String(40))
    key_encrypted: Mapped[str] = mapped_column(Text)
    # The key a target platform pushes downlinks with, when the template asks for one (sealed; shown once).
    downlink_key_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    downlink_key_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    resources: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    actual_state: Mapped[str] = mapped_column(String(16), default="pending")
    state_since: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    restart_count: Mapped[int] = mapped_column(Integer, default=0)
    runtime: Mapped[str | None] = mapped_column(String(20), nullable=True)
    runtime_handle: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    config_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    retried: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)  # copies its workers recognised and dropped
    dead_lettered: Mapped[int] = mapped_column(Integer, default=0)  # messages parked after failing for good
    # Deliveries per latency bucket (the SDK's LATENCY_BUCKETS, then +Inf) and the sum of their seconds.
    delivery_latency: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_delivery_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    @property
    def runtime_name(self) -> str:
        """Globally unique, DNS-safe name of this integration's worker (ids never contain `--`)."""
        return f"{self.application_id}--{self.id}"


class IntegrationActivity(Base):
    """Recent deliveries and errors of an integration, with request and response excerpts."""

    __tablename__ = "integration_activity"
    __table_args__ = (Index("ix_activity_integration", "application_id", "integration_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(String(36))
    integration_id: Mapped[str] = mapped_column(String(36))
    kind: Mapped[str] = mapped_column(String(20))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DeadLetter(Base):
    """A message that failed for good, kept in full until it is sent again or deleted."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index("ix_dead_letters_integration", "application_id", "integration_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(String(36))
    integration_id: Mapped[str] = mapped_column(String(36))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    event: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(36), default="")
    topic: Mapped[str] = mapped_column(String(500))
    payload: Mapped[str] = mapped_column(Text)  # the message as the worker received it
    encoding: Mapped[str] = mapped_column(String(16), default="utf-8")  # or base64, for bytes that are not text
    error: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the request and the last answer
    attempts: Mapped[int] = mapped_column(Integer, default=1)


class IntegrationStats(Base):
    """Delivery counters per integration and minute, for charts of the last hours."""

    __tablename__ = "integration_stats"

    application_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    integration_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    minute: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    retried: Mapped[int] = mapped_column(Integer, default=0)


# SQLite gives a rowid alias (and AUTOINCREMENT, so ids are never reused) only to INTEGER PRIMARY KEY.
LogId = BigInteger().with_variant(Integer, "sqlite")


class EventRecord(Base):
    """One event in the durable log: a global, increasing id, the event's name, and its JSON as emitted."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_application", "application_id", "id"),
        Index("ix_events_device", "application_id", "device_id", "id"),
        Index("ix_events_time", "application_id", "time"),
        Index("ix_events_instance", "instance_id", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(LogId, primary_key=True, autoincrement=True)
    application_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    integration_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    topic: Mapped[str | None] = mapped_column(String(255), nullable=True)  # where it goes on MQTT, if anywhere
    data: Mapped[str] = mapped_column(Text)
    instance_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # which instance logged it


class EventRetention(Base):
    """Per application: the newest event id that retention removed (a client asking for older ones missed some)."""

    __tablename__ = "event_retention"

    application_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    pruned_through: Mapped[int] = mapped_column(LogId, default=0)


class Lease(Base):
    """A lease (client-go's Lease): who holds it, since when, last renewed; `transitions` is the fencing token."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(64), nullable=True)
    acquired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    renewed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    duration_seconds: Mapped[float] = mapped_column(Float)
    transitions: Mapped[int] = mapped_column(Integer, default=0)


class Instance(Base):
    """A running orchestrator: where its API is, when it was last seen, and what it is configured with."""

    __tablename__ = "instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    api_url: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    seen_at: Mapped[datetime] = mapped_column(UtcDateTime)
    templates_fingerprint: Mapped[str] = mapped_column(String(64))
    secret_fingerprint: Mapped[str] = mapped_column(String(64))
    # Every event it logged up to this id was acknowledged by the broker (as of its last heartbeat).
    published_through: Mapped[int] = mapped_column(LogId, default=0, server_default="0")


class ClusterRecord(Base):
    """The one row that names the cluster of instances on this database (workers carry it as a label)."""

    __tablename__ = "clusters"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
