"""Event delivery between processes. In memory for one process; the same interface for a PostgreSQL bus."""

from __future__ import annotations

from typing import Protocol

from imsvc.events import Event, Presence
from imsvc.hub import Hub


class Bus(Protocol):
    def publish(self, event: Event | Presence) -> None:
        """Deliver `event` to every process's sockets; never blocks, so callers keep their order."""
        ...


class MemoryBus:
    """One process: an event goes straight to this process's sockets."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def publish(self, event: Event | Presence) -> None:
        if isinstance(event, Presence):
            self._hub.deliver_presence(event)
        else:
            self._hub.deliver(event)
