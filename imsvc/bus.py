"""Event delivery between processes. In memory for one process; the same interface for a PostgreSQL bus."""

from __future__ import annotations

from typing import Protocol

from imsvc.hub import Event, Hub


class Bus(Protocol):
    async def publish(self, event: Event) -> None: ...


class MemoryBus:
    """One process: an event goes straight to this process's sockets."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    async def publish(self, event: Event) -> None:
        self._hub.deliver(event)
