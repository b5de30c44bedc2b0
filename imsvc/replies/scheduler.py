"""The reply scheduler: owns every reply run of the process.

Replies outlive the socket that asked (its user may reconnect and resume). Per session they run one
at a time, in order; across sessions at most AI_MAX_CONCURRENCY at once, with up to AI_MAX_QUEUE
waiting behind them (past that: `busy`). Each session's worker is a task the scheduler keeps,
started in a fresh logging context, and awaited on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections import deque
from collections.abc import AsyncIterator

from imsvc import store
from imsvc.batch import ReplySettings
from imsvc.bus import Bus
from imsvc.db import Database
from imsvc.errors import Busy, Conflict, Interrupted, NotFound
from imsvc.events import Cancel
from imsvc.hub import Hub
from imsvc.llm import ChatModel
from imsvc.logs import get_logger
from imsvc.metrics import Metrics
from imsvc.models import RecordStatus
from imsvc.replies.run import Phase, ReplyRun, Stop, Tools, refusal, stopped
from imsvc.schemas import AiReplySnapshotFrame, MessageOut, ServerFrame
from imsvc.sequencer import Sequencer
from imsvc.settings import Settings

log = get_logger(__name__)


class ReplyScheduler:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        bus: Bus,
        sequencer: Sequencer,
        model: ChatModel,
        metrics: Metrics,
        hub: Hub,
        owner: str | None = None,
    ) -> None:
        self._tools = Tools(settings, db, bus, sequencer, model, metrics)
        self._bus = bus
        self._hub = hub
        self._owner = owner  # this process, when replicas share the database
        self._remote_cancels: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(settings.ai_max_concurrency)
        self._capacity = settings.ai_max_concurrency + settings.ai_max_queue
        self._queues: dict[str, deque[ReplyRun]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._runs: dict[str, ReplyRun] = {}
        self._closing = False

    @property
    def defaults(self) -> ReplySettings:
        """The server's model and system prompt, for sessions that choose none."""
        return ReplySettings(self._tools.model.model, self._tools.settings.ai_system_prompt)

    # Starting

    async def start(self, record_id: str, user_message: MessageOut, reply: ReplySettings) -> None:
        """Queue a reply whose record (status 0) is committed; when there is no room, end it as `busy`."""
        run = ReplyRun(self._tools, record_id, user_message, reply)
        if self._closing or len(self._runs) >= self._capacity:
            error = Interrupted("the server is shutting down") if self._closing else Busy("too many replies waiting")
            await run.conclude(refusal(error))
            return
        self._runs[record_id] = run
        self._queues.setdefault(run.session_id, deque()).append(run)
        if run.session_id not in self._workers:
            self._workers[run.session_id] = asyncio.create_task(
                self._work(run.session_id), name=f"replies:{run.session_id}", context=contextvars.Context()
            )

    def is_running(self, record_id: str) -> bool:
        return record_id in self._runs

    async def _work(self, session_id: str) -> None:
        """One session's replies, one after the other."""
        queue = self._queues[session_id]
        try:
            while queue:
                async with self._slots:
                    if not queue:  # the last one was cancelled while waiting for a slot
                        break
                    run = queue.popleft()
                    try:
                        await run.run()
                    finally:
                        self._runs.pop(run.record_id, None)
        finally:
            del self._workers[session_id]
            del self._queues[session_id]

    # Asked by the edges

    def snapshots(self, session_id: str) -> list[AiReplySnapshotFrame]:
        """The text so far of each reply generating in the session, for a `sync`: this process's own, and
        those that other processes run (as their deltas told this one)."""
        local = [
            run.snapshot()
            for run in self._runs.values()
            if run.session_id == session_id and run.phase is Phase.GENERATING
        ]
        known = {snapshot.record_id for snapshot in local}
        return local + [s for s in self._hub.streams(session_id) if s.record_id not in known]

    @contextlib.asynccontextmanager
    async def listen(self, record_id: str) -> AsyncIterator[AsyncIterator[ServerFrame] | None]:
        """A running reply's frames from now on (snapshot, deltas, final), or None when it is not running."""
        run = self._runs.get(record_id)
        if run is None:  # it may run on another process
            async with self._hub.follow(record_id) as followed:
                yield followed
            return
        async with run.listen() as frames:
            yield frames

    async def cancel(self, user_id: str, record_id: str) -> None:
        """Stop a reply: it ends with `ai_reply`, finish_reason "cancelled". 404 unknown/foreign, 409 finished."""
        async with self._tools.db.reader() as s:
            record = await store.get_record(s, record_id)
            if record is None or await store.member_role(s, record.session_id, user_id) is None:
                raise NotFound("no such AI record")
        run = self._runs.get(record_id)
        if run is None and record.status == RecordStatus.PROCESSING and record.owner not in (None, self._owner):
            self._bus.publish(Cancel(record_id))  # it runs on another process: ask that one
            return
        if run is None or not await self._stop(run, Stop.CANCELLED):
            raise Conflict("this reply has already ended")

    def take_cancels(self) -> None:
        """Take the cancels other processes send for the replies that run here."""
        self._remote_cancels = asyncio.create_task(self._take_cancels(), name="replies:cancels")

    async def _take_cancels(self) -> None:
        while True:
            cancel = await self._bus.cancels.get()
            run = self._runs.get(cancel.record_id)
            if run is not None:
                await self._stop(run, Stop.CANCELLED)

    async def interrupt_all(self) -> None:
        """End every reply of this process as `interrupted` (it may be counted as dead by the others)."""
        for run in list(self._runs.values()):
            await self._stop(run, Stop.INTERRUPTED)

    async def _stop(self, run: ReplyRun, reason: Stop) -> bool:
        queue = self._queues.get(run.session_id)
        if queue is not None and run in queue:  # still waiting: end it here
            queue.remove(run)
            run.stop(reason)
            try:
                await run.conclude(stopped(reason))
            finally:
                self._runs.pop(run.record_id, None)
            return True
        return run.stop(reason)  # running: it sees the signal and concludes itself

    # Stopping

    async def shutdown(self, grace_s: float) -> None:
        """Let running replies finish for `grace_s`, end the rest as `interrupted` (text stored), then stop."""
        self._closing = True
        if self._remote_cancels is not None:
            self._remote_cancels.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._remote_cancels
        if self._workers:
            await asyncio.wait(list(self._workers.values()), timeout=grace_s)
        for run in list(self._runs.values()):
            await self._stop(run, Stop.INTERRUPTED)
        if self._workers:  # storing the outcomes; past a second grace, the database is not coming back
            await asyncio.wait(list(self._workers.values()), timeout=grace_s)
        for run in self._runs.values():
            run.give_up()
        if self._workers:
            await asyncio.wait(list(self._workers.values()))
        await self._tools.model.aclose()

    async def interrupt_orphans(self) -> None:
        """At start-up: records a crash left at status 0 become failed (`interrupted`)."""
        try:
            async with self._tools.db.transaction() as s:
                count = await store.interrupt_unfinished(s)
        except Exception:  # start anyway: /ready reports the database, and nothing can run without it
            log.exception("could not check for interrupted replies")
            return
        if count:
            log.warning("replies interrupted by an earlier crash", count=count)
