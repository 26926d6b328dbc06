"""Recently seen message ids: how a subscriber that counts stays exactly-once over redeliveries.

JetStream drops a republished message whose `Nats-Msg-Id` it has already stored, but a core subscriber
of the same subject sees every publish, the republish after a lost ack included (a nats-server restart
does this). Whoever counts what it receives keeps the ids it has counted and skips a repeat.
"""

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RecentIds(Generic[K]):
    """The last `capacity` ids seen, oldest forgotten first: memory stays bounded."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._ids: OrderedDict[K, None] = OrderedDict()

    def first_time(self, key: K) -> bool:
        """Return True and remember `key` the first time it is seen; False for a repeat."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)
