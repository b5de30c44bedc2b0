"""The process-wide objects that the app's lifespan builds and disposes, handed to routes and sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from imsvc.bus import Bus
from imsvc.chat import Chat
from imsvc.db import Database
from imsvc.hub import CLOSE_SHUTDOWN, Hub
from imsvc.metrics import Metrics
from imsvc.presence import Presence
from imsvc.replies import ReplyScheduler
from imsvc.sequencer import Sequencer
from imsvc.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    hub: Hub
    bus: Bus
    chat: Chat
    replies: ReplyScheduler
    sequencer: Sequencer
    metrics: Metrics
    presence: Presence
    draining: bool = field(default=False)

    async def drain(self) -> None:
        """Shutting down: refuse new work, give running replies their grace, then close every socket (1012).

        Runs before the server closes its connections, so that members see the replies end.
        """
        if self.draining:
            return
        self.draining = True
        await self.replies.shutdown(self.settings.shutdown_grace_s)
        await self.sequencer.close()
        self.hub.close_all(CLOSE_SHUTDOWN, "server shutting down")


def services(conn: HTTPConnection) -> Services:
    found: Services = conn.app.state.services
    return found
