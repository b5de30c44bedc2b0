"""A bounded buffer of outgoing frames that coalesces what may be merged, for a socket or an SSE stream.

Frames with a coalescing key do not take places. The deltas of one reply merge: a waiting delta
absorbs the next one, so a slow reader of a long reply gets fewer, larger deltas; a frame without a
key ends every merge before it, so that nothing merges in front of a snapshot or a final reply.
Typing and presence frames are state, not a stream: a waiting one is replaced by the newest of the
same user (and session). Only frames without a key count against the limit; past it, `put` answers
False and the owner gives up on the reader (a socket is closed 1008).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Hashable

from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplyErrorFrame,
    AiReplyFrame,
    PresenceFrame,
    ServerFrame,
    TypingNotice,
)
from imsvc.wsproto import Prepared


def coalescing_key(frame: ServerFrame) -> Hashable | None:
    if isinstance(frame, AiReplyDeltaFrame):
        return ("delta", frame.record_id)
    if isinstance(frame, TypingNotice):
        return ("typing", frame.user_id, frame.session_id)
    if isinstance(frame, PresenceFrame):
        return ("presence", frame.user_id)
    return None


def merged(waiting: ServerFrame, new: ServerFrame) -> ServerFrame | None:
    """`waiting` and `new` as one frame, or None when they do not merge (deltas that are not contiguous)."""
    if isinstance(waiting, AiReplyDeltaFrame) and isinstance(new, AiReplyDeltaFrame):
        if waiting.offset + len(waiting.delta) != new.offset:
            return None
        return waiting.model_copy(update={"delta": waiting.delta + new.delta})
    return new  # typing, presence: the newest state wins


def _streamed(key: Hashable) -> bool:
    """Whether frames of this key are a stream (merges end at a counted frame) rather than a state."""
    return isinstance(key, tuple) and key[0] == "delta"


class Item:
    """A frame and, when rendered already (once for every socket of an event), its JSON text."""

    __slots__ = ("frame", "key", "prepared")

    def __init__(self, frame: ServerFrame | None, prepared: Prepared | None, key: Hashable | None) -> None:
        self.frame = frame
        self.prepared = prepared
        self.key = key

    def wire(self) -> Prepared:
        self.prepared = rendered(self.frame, self.prepared)
        return self.prepared


def rendered(frame: ServerFrame | None, prepared: Prepared | None) -> Prepared:
    """A frame's JSON: `prepared` when rendered already (or when there is no model), else rendered now."""
    if prepared is not None:
        return prepared
    assert frame is not None
    return Prepared(frame.wire())


class Outbox:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._items: deque[Item] = deque()
        self._counted = 0
        self._open_merges: dict[Hashable, Item] = {}
        self._ready = asyncio.Event()

    @property
    def counted(self) -> int:
        return self._counted

    @property
    def empty(self) -> bool:
        return not self._items

    def put(self, frame: ServerFrame | None, prepared: Prepared | None = None) -> bool:
        """Queue a frame (`prepared`: its JSON, when rendered already; alone, a frame rendered without a
        model); False when the buffer is full."""
        key = coalescing_key(frame) if frame is not None else None
        if key is not None:
            waiting = self._open_merges.get(key)
            if waiting is not None and waiting.frame is not None and frame is not None:
                joined = merged(waiting.frame, frame)
                if joined is not None:
                    waiting.frame, waiting.prepared = joined, prepared if joined is frame else None
                    return True
            item = Item(frame, prepared, key)
            self._open_merges[key] = item
        else:
            if self._counted >= self._limit:
                return False
            item = Item(frame, prepared, None)
            self._counted += 1
            for stream in [k for k in self._open_merges if _streamed(k)]:
                del self._open_merges[stream]
        self._items.append(item)
        self._ready.set()
        return True

    def pop(self) -> Item | None:
        if not self._items:
            return None
        item = self._items.popleft()
        if item.key is None:
            self._counted -= 1
        elif self._open_merges.get(item.key) is item:
            del self._open_merges[item.key]  # being sent: nothing more merges into it
        return item

    async def wait(self) -> None:
        """Until something is queued, or `wake` is called, since the last wait."""
        await self._ready.wait()
        self._ready.clear()

    def wake(self) -> None:
        self._ready.set()

    def clear(self) -> None:
        self._items.clear()
        self._open_merges.clear()
        self._counted = 0


async def reply_frames(outbox: Outbox) -> AsyncIterator[ServerFrame]:
    """What an outbox of a reply's frames holds and receives, up to and including the final frame."""
    while True:
        await outbox.wait()
        while (item := outbox.pop()) is not None:
            assert item.frame is not None
            yield item.frame
            if isinstance(item.frame, AiReplyFrame | AiReplyErrorFrame):
                return
