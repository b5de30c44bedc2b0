"""The process-wide objects that the app's lifespan builds and disposes, handed to routes and sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from imsvc.bus import Bus
from imsvc.chat import Chat
from imsvc.db import Database
from imsvc.hub import Hub
from imsvc.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    hub: Hub
    bus: Bus
    chat: Chat
    draining: bool = field(default=False)


def services(conn: HTTPConnection) -> Services:
    found: Services = conn.app.state.services
    return found
