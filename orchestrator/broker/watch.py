"""The broker as the orchestrator sees it: since when it runs, and how often it restarted (`$SYS/broker/uptime`)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from ..bus import Bus

log = logging.getLogger(__name__)
UPTIME_TOPIC = "$SYS/broker/uptime"  # Mosquitto's, every 10 s: "<seconds> seconds"
UPTIME_SLACK = timedelta(seconds=15)  # the uptime is up to 10 s old


class BrokerWatch:
    """Follows the broker's uptime: its start time, and restarts seen (the uptime went backwards)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.started_at: datetime | None = None
        self.uptime: int | None = None  # seconds, as last published (every 10 s; retained, so maybe older)
        self.restarts = 0  # restarts seen while this orchestrator ran
        self.last_restart_at: datetime | None = None
        self.seen_in = 0  # the bus connection during which the uptime last came
        bus.subscribe(UPTIME_TOPIC, self._on_uptime)

    async def _on_uptime(self, topic: str, payload: bytes) -> None:
        try:
            seconds = int(payload.split()[0])
        except (ValueError, IndexError):
            return
        started = datetime.now(UTC) - timedelta(seconds=seconds)
        # Within one broker's life the uptime only grows (a retained copy repeats the last value at most).
        if self.uptime is not None and seconds < self.uptime:
            self.restarts += 1
            self.last_restart_at = started
            log.warning("the MQTT broker restarted (up %d s)", seconds)
        self.uptime = seconds
        self.started_at = started
        self.seen_in = self.bus.connections

    def report(self) -> dict[str, object]:
        """For /healthz."""
        return {
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "uptime_seconds": self.uptime,
            "restarts_seen": self.restarts,
            "last_restart_at": self.last_restart_at.isoformat() if self.last_restart_at else None,
        }
