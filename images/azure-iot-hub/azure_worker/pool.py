"""A bounded pool of device connections: idle ones close, the least recently used goes first when full."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Connect = Callable[[str], Awaitable[Any]]
Disconnect = Callable[[Any], Awaitable[None]]


@dataclass
class Entry:
    """One open device connection."""

    client: Any
    opened: float
    used: float


class ConnectionPool:
    """At most `limit` open connections, keyed by device; a connection older than `max_age` is renewed
    (its SAS token would expire) and one unused for `idle` seconds is closed."""

    def __init__(self, connect: Connect, disconnect: Disconnect, limit: int, idle: float, max_age: float) -> None:
        self._connect = connect
        self._disconnect = disconnect
        self.limit = limit
        self.idle = idle
        self.max_age = max_age
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._opening: dict[str, asyncio.Future[Any]] = {}
        self.opened_total = 0
        self.evicted_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, device_id: str) -> Any:
        """The device's connection, opened if needed (one opening at a time per device)."""
        now = time.monotonic()
        entry = self._entries.get(device_id)
        if entry is not None and now - entry.opened < self.max_age:
            entry.used = now
            self._entries.move_to_end(device_id)
            return entry.client
        if entry is not None:
            await self.drop(device_id)
        pending = self._opening.get(device_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._opening[device_id] = future
        try:
            # Connections being opened count too, so concurrent opens cannot overshoot the limit.
            while self._entries and len(self._entries) + len(self._opening) > self.limit:
                oldest, _ = next(iter(self._entries.items()))
                self.evicted_total += 1
                await self.drop(oldest)
            client = await self._connect(device_id)
            self.opened_total += 1
            self._entries[device_id] = Entry(client, time.monotonic(), time.monotonic())
            future.set_result(client)
            return client
        except BaseException as err:
            future.set_exception(err)
            future.exception()  # retrieved: waiters get it, nobody else needs to
            raise
        finally:
            self._opening.pop(device_id, None)

    async def drop(self, device_id: str) -> None:
        """Close and forget a device's connection (after an error, or to make room)."""
        entry = self._entries.pop(device_id, None)
        if entry is not None:
            try:
                await self._disconnect(entry.client)
            except Exception as err:  # it is going away anyway
                log.debug("closing the connection of %s: %r", device_id, err)

    async def close_idle(self) -> int:
        """Close connections unused for longer than `idle`; returns how many."""
        cutoff = time.monotonic() - self.idle
        idle = [device_id for device_id, entry in self._entries.items() if entry.used < cutoff]
        for device_id in idle:
            await self.drop(device_id)
        return len(idle)

    async def close_all(self) -> None:
        """Close every connection."""
        for device_id in list(self._entries):
            await self.drop(device_id)
