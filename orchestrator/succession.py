"""Succession: what an instance that died leaves behind, taken over by the leader.

An instance killed without a clean stop leaves two things that nobody else would handle: its broker
session, where the broker keeps queueing its share of the messages handled once (and what it had in
flight), and the events it logged that the broker had not acknowledged yet. Its workers need nothing:
every instance of the cluster sees the same workers, and the leader's reconciler adopts them.
"""

from __future__ import annotations

import logging

from .bus import Bus, instance_client_id
from .events.outbox import Outbox

log = logging.getLogger(__name__)


class Succession:
    """Drains a dead instance's broker session and publishes its unpublished events."""

    def __init__(self, bus: Bus, outbox: Outbox) -> None:
        self.bus = bus
        self.outbox = outbox
        self.taken_over = 0  # instances taken over since start

    async def take_over(self, instance_id: str, published_through: int) -> None:
        """Take over from an instance that stopped beating (raises what the broker or database raise)."""
        handled = await self.bus.drain_session(instance_client_id(instance_id))
        published = await self.outbox.publish_for(instance_id, published_through)
        self.taken_over += 1
        log.warning(
            "took over from instance %s, which stopped without leaving: %d messages it was sent handled here, "
            "%d events it logged published",
            instance_id,
            handled,
            published,
        )
