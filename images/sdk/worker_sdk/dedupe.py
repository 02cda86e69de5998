"""Recognising copies: a broker that restarted, or the orchestrator publishing again from its event log,
can deliver a message a worker already handled. Copies are byte-for-byte equal to the original (same
topic, same payload, correlation ids and `received_at` included), so a short fingerprint of both tells
them apart from new messages, which always differ (a fresh correlation id, a new `received_at`)."""

from __future__ import annotations

from collections import deque
from hashlib import blake2b


def fingerprint(topic: str, payload: bytes) -> int:
    """64 bits of BLAKE2b over topic and payload: a collision among the remembered few is negligible."""
    digest = blake2b(topic.encode(), digest_size=8)
    digest.update(b"\0")
    digest.update(payload)
    return int.from_bytes(digest.digest(), "big")


class RecentMessages:
    """The fingerprints of the last `capacity` messages handled: bounded memory, about 80 bytes each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._order: deque[int] = deque()
        self._seen: set[int] = set()

    def __contains__(self, key: int) -> bool:
        return key in self._seen

    def add(self, key: int) -> None:
        """Remember a handled message, forgetting the oldest beyond capacity."""
        if self.capacity <= 0 or key in self._seen:
            return
        self._seen.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._seen.discard(self._order.popleft())
