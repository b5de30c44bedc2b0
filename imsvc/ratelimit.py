"""A sliding-window budget of messages per user (REST sends, WebSocket sends and regenerates share it)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._limit = limit
        self._window = window_s
        self._sent: dict[str, deque[float]] = {}

    def take(self, user_id: str) -> int | None:
        """Spend one of the user's budget: None when allowed, else the whole seconds until it would be."""
        if self._limit <= 0:
            return None
        now = self._clock()
        sent = self._sent.setdefault(user_id, deque())
        while sent and sent[0] <= now - self._window:
            sent.popleft()
        if len(sent) >= self._limit:
            return max(1, math.ceil(sent[0] + self._window - now))
        sent.append(now)
        return None

    def give_back(self, user_id: str) -> None:
        """Undo the last take (the send turned out to be an idempotent repeat, or failed)."""
        sent = self._sent.get(user_id)
        if sent:
            sent.pop()
        if not sent:
            self._sent.pop(user_id, None)
