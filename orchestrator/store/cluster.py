"""The cluster in the database: the leader's lease and the instances that run."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.models import ClusterRecord, EventRecord, Instance, Lease, utcnow

LeaseRecord = tuple[str | None, int, datetime | None]  # holder, transitions, renewed_at: what a follower watches


def get_lease(session: Session, name: str) -> Lease | None:
    """The lease as it is now."""
    return session.get(Lease, name)


def acquire_or_renew(
    session: Session, *, name: str, me: str, duration: float, observed: LeaseRecord | None, expired: bool
) -> Lease | None:
    """Renew the lease if we hold it; take it if nobody does, or if it is `observed` unchanged and `expired`.

    The row is locked (PostgreSQL) so two instances taking an expired lease at once do it one after the
    other: the second then finds a record other than the one it observed, and gets nothing.
    """
    lease = session.execute(select(Lease).where(Lease.name == name).with_for_update()).scalar_one_or_none()
    now = utcnow()
    if lease is None:
        lease = Lease(name=name, holder=me, acquired_at=now, renewed_at=now, duration_seconds=duration, transitions=1)
        session.add(lease)
        session.flush()
        return lease
    if lease.holder == me:
        lease.renewed_at = now
        lease.duration_seconds = duration  # followers judge expiry by the holder's duration
        return lease
    current: LeaseRecord = (lease.holder, lease.transitions, lease.renewed_at)
    if lease.holder is None or (expired and current == observed):
        lease.holder, lease.acquired_at, lease.renewed_at = me, now, now
        lease.duration_seconds = duration
        lease.transitions += 1  # the fencing token: an old leader's token no longer matches
        return lease
    return None


def holds(session: Session, *, name: str, me: str, token: int) -> bool:
    """The fence: True while the lease is ours under this token (nobody took it since)."""
    lease = session.get(Lease, name)
    return lease is not None and lease.holder == me and lease.transitions == token


def release(session: Session, *, name: str, me: str) -> None:
    """Give the lease up (a clean stop), so another instance leads at once instead of after it expires."""
    lease = session.execute(select(Lease).where(Lease.name == name).with_for_update()).scalar_one_or_none()
    if lease is not None and lease.holder == me:
        lease.holder = None


def heartbeat(session: Session, *, instance: Instance) -> None:
    """Say this instance runs (made on the first beat, refreshed after)."""
    current = session.get(Instance, instance.id)
    if current is None:
        session.add(instance)
        return
    current.api_url, current.seen_at = instance.api_url, utcnow()
    current.templates_fingerprint = instance.templates_fingerprint
    current.secret_fingerprint = instance.secret_fingerprint
    current.published_through = instance.published_through


def live_instances(session: Session, *, seen_since: datetime) -> list[Instance]:
    """Instances seen since then, oldest first."""
    query = select(Instance).where(Instance.seen_at >= seen_since).order_by(Instance.started_at)
    return list(session.scalars(query))


def all_instances(session: Session) -> list[Instance]:
    """Every instance on record, live or not."""
    return list(session.scalars(select(Instance).order_by(Instance.started_at)))


def forget_instance(session: Session, *, instance_id: str, seen_at: datetime | None = None) -> None:
    """Remove an instance that stopped cleanly, or was taken over (if it was not seen since `seen_at`)."""
    current = session.get(Instance, instance_id)
    if current is not None and (seen_at is None or current.seen_at == seen_at):
        session.delete(current)


def newest_event_id(session: Session) -> int:
    """The newest id in the event log (0 if empty)."""
    return int(session.scalar(select(func.max(EventRecord.id))) or 0)


def cluster_id(session: Session) -> str:
    """The cluster's id, made with the database."""
    return session.scalars(select(ClusterRecord.id)).one()
