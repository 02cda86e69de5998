"""The log's tail: with several instances, each follows the events every instance logs, for its own listeners."""

from __future__ import annotations

import asyncio
import logging

from ..bus import Bus
from ..errors import OrchestratorError
from .log import EventLog

log = logging.getLogger(__name__)
TAIL_INTERVAL_SECONDS = 0.2
TAIL_PAGE = 1000


class LogTail:
    """Reads what was logged after its cursor, every few tenths of a second, and announces it on the bus.

    Events commit in the order of their ids (the log takes a lock for it), so a cursor never skips one
    that commits late; listeners get every instance's events in id order, as they do on one instance.
    """

    def __init__(self, log: EventLog, bus: Bus, interval: float = TAIL_INTERVAL_SECONDS) -> None:
        self.log = log
        self.bus = bus
        self.interval = interval
        self.cursor = 0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow from the newest event on (what came before is read from the log by whoever needs it)."""
        self.cursor = await self.log.newest_id()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop following."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                while page := await self.log.after(self.cursor, TAIL_PAGE):
                    self.bus.announce(page)
                    self.cursor = page[-1].id
                    if len(page) < TAIL_PAGE:
                        break
            except OrchestratorError as err:  # the database is away: listeners wait, nothing is skipped
                log.warning("the event tail paused: %s", err.detail)
            except Exception:
                log.exception("the event tail failed; trying again")
            await asyncio.sleep(self.interval)
