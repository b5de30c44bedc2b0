"""One reply, as a small state machine: queued → generating → concluding → done.

The run owns its stop signal (cancel, shutdown): generation runs in a child task that the run
cancels and awaits when asked to stop or when time is up; the run itself is never cancelled to
carry a message. Concluding stores the outcome through the sequencer, retrying with backoff while
the database is unreachable (the text is kept meanwhile), so a record never stays at status 0
while the process lives; if it cannot be stored before the process gives up, members are told
with an `ai_reply_error` and start-up recovery closes the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum

from imsvc import store
from imsvc.batch import ReplyEnd, ReplySettings
from imsvc.bus import Bus
from imsvc.context import build_context
from imsvc.db import Database
from imsvc.errors import ImsvcError, Interrupted, ProviderError, ReplyTimeout, translate
from imsvc.events import Event
from imsvc.llm import ChatModel, Completion, Request
from imsvc.logs import bound, get_logger
from imsvc.metrics import Metrics
from imsvc.models import RecordStatus
from imsvc.outbox import Outbox, reply_frames
from imsvc.replies.records import Outcome, Timings, record_outcome
from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplyErrorFrame,
    AiReplyFrame,
    AiReplySnapshotFrame,
    AiReplyStartFrame,
    ErrorDetail,
    MessageOut,
    ServerFrame,
    final_reply_frame,
)
from imsvc.sequencer import Sequencer
from imsvc.settings import Settings

log = get_logger(__name__)

LISTENER_QUEUE = 1000
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 5.0


class Phase(Enum):
    QUEUED = "queued"
    GENERATING = "generating"
    CONCLUDING = "concluding"
    DONE = "done"


class Stop(Enum):
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class Tools:
    """What every run uses; built once by the scheduler."""

    settings: Settings
    db: Database
    bus: Bus
    sequencer: Sequencer
    model: ChatModel
    metrics: Metrics


class ReplyRun:
    def __init__(self, tools: Tools, record_id: str, user_message: MessageOut, reply: ReplySettings) -> None:
        self.record_id = record_id
        self.reply = reply
        self.session_id = user_message.session_id
        self.user_message = user_message
        self.phase = Phase.QUEUED
        self._tools = tools
        self._text = ""
        self._sent = 0  # how much of the text went out as deltas
        self._flush_due = False
        self._stop: Stop | None = None
        self._stopped = asyncio.Event()
        self._give_up = asyncio.Event()
        self._listeners: set[Outbox] = set()
        self._finished = asyncio.Event()
        self._final: AiReplyFrame | AiReplyErrorFrame | None = None

    # Asked from outside

    def stop(self, reason: Stop) -> bool:
        """Ask the run to stop; False when it is too late (its outcome is being stored, or stored)."""
        if self.phase in (Phase.CONCLUDING, Phase.DONE) or self._stop is not None:
            return False
        self._stop = reason
        self._stopped.set()
        return True

    def give_up(self) -> None:
        """Stop retrying to store the outcome (the process is going away)."""
        self._give_up.set()

    def snapshot(self) -> AiReplySnapshotFrame:
        return AiReplySnapshotFrame(
            record_id=self.record_id,
            session_id=self.session_id,
            user_message_id=self.user_message.message_id,
            content=self._text,
        )

    @contextlib.asynccontextmanager
    async def listen(self) -> AsyncIterator[AsyncIterator[ServerFrame]]:
        """The text so far (a snapshot), then every delta, then the final frame, for the SSE stream."""
        outbox = Outbox(LISTENER_QUEUE)  # deltas merge: only the snapshot, start and final frame take places
        outbox.put(self.snapshot())
        if self._final is not None:
            outbox.put(self._final)
        self._listeners.add(outbox)
        try:
            yield reply_frames(outbox)
        finally:
            self._listeners.discard(outbox)

    async def finished(self) -> None:
        await self._finished.wait()

    # Running

    async def run(self) -> None:
        """Generate, then conclude; called by the scheduler when the run has a slot."""
        with bound(session_id=self.session_id, record_id=self.record_id, user_id=self.user_message.from_user_id):
            timings, completion = Timings(began=time.monotonic()), Completion()
            request: Request = {}
            try:
                self._begin()
                request = await self._request()
                outcome = await self._generate(request, timings, completion)
            except Exception as exc:
                error = translate(exc)
                if error.code == "internal":
                    log.exception("reply failed")
                outcome = Outcome(RecordStatus.FAILED, "error", error)
            timings.ended = time.monotonic()
            await self.conclude(outcome, timings, request, completion)

    def _begin(self) -> None:
        """Generating from now on. The start frame needs nothing from the database: sent before the context
        is read, its socket writes overlap that read instead of delaying the model's request."""
        self.phase = Phase.GENERATING
        self._publish(
            AiReplyStartFrame(
                record_id=self.record_id, session_id=self.session_id, user_message_id=self.user_message.message_id
            )
        )

    async def _request(self) -> Request:
        settings = self._tools.settings
        async with self._tools.db.reader() as s:
            history, humans = await store.reply_context(
                s, self.session_id, self.user_message.seq, settings.ai_context_messages, settings.ai_bot_user_id
            )
        messages = build_context(
            history, humans, settings.ai_bot_user_id, self.reply.system_prompt, settings.ai_context_chars
        )
        return self._tools.model.request(messages, self.reply.model)

    async def _generate(self, request: Request, timings: Timings, completion: Completion) -> Outcome:
        if self._stop is not None:  # stopped while its context was read: nothing was asked of the model
            return stopped(self._stop)
        generation = asyncio.create_task(self._stream(request, timings, completion))
        stop = asyncio.create_task(self._stopped.wait())
        try:
            done, _ = await asyncio.wait(
                {generation, stop}, timeout=self._tools.settings.ai_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (generation, stop):
                task.cancel()
            for task in (generation, stop):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._flush()  # every delta before the final frame
        if generation in done:
            try:
                generation.result()
            except ProviderError as exc:
                return Outcome(RecordStatus.FAILED, "error", exc)
            return Outcome(RecordStatus.SUCCESS, completion.finish_reason or "stop")
        if self._stop is not None:
            return stopped(self._stop)
        return Outcome(
            RecordStatus.FAILED,
            ReplyTimeout.code,
            ReplyTimeout(f"no complete reply within {self._tools.settings.ai_timeout_s} s"),
        )

    async def _stream(self, request: Request, timings: Timings, completion: Completion) -> None:
        metrics = self._tools.metrics
        async with contextlib.aclosing(self._tools.model.stream(request, completion)) as deltas:
            async for delta in deltas:
                metrics.deltas.inc()
                self._text += delta
                if timings.first_token is None:
                    timings.first_token = time.monotonic()
                    metrics.first_token.observe(timings.first_token - (timings.began or 0))
                    self._flush()
                    await asyncio.sleep(0)  # written before the rest of its burst is parsed
                elif not self._flush_due:
                    self._flush_due = True
                    asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """One delta for the text that arrived since the last one. Tokens parsed from one read of the model's
        stream (no await between them) go out as one frame, not one frame (and one write per socket) each."""
        self._flush_due = False
        if self._sent < len(self._text):
            offset, self._sent = self._sent, len(self._text)
            delta = self._text[offset:]
            self._publish(
                AiReplyDeltaFrame(record_id=self.record_id, session_id=self.session_id, delta=delta, offset=offset)
            )

    async def conclude(
        self,
        outcome: Outcome,
        timings: Timings | None = None,
        request: Request | None = None,
        completion: Completion | None = None,
    ) -> None:
        """Store the outcome (and the text so far as the assistant's message), then tell members and listeners."""
        self.phase = Phase.CONCLUDING
        completion = completion or Completion()
        op = ReplyEnd(
            session_id=self.session_id,
            record_id=self.record_id,
            user_message_id=self.user_message.message_id,
            author=self._tools.settings.ai_bot_user_id,
            text=self._text,
            outcome=record_outcome(
                outcome,
                timings or Timings(),
                json.dumps(request, ensure_ascii=False) if request else "",
                self._text,
                completion.prompt_tokens,
                completion.completion_tokens,
            ),
            error=outcome.error,
        )
        final = await self._store(op)
        self._final = final
        self.phase = Phase.DONE
        for listener in self._listeners:
            listener.put(final)
        self._finished.set()
        self._tools.metrics.replies.labels(str(int(outcome.status))).inc()
        log.info(
            "reply ended",
            status=int(outcome.status),
            finish_reason=outcome.finish_reason,
            duration_ms=op.outcome.duration_ms,
            first_token_ms=op.outcome.first_token_ms,
        )

    async def _store(self, op: ReplyEnd) -> AiReplyFrame | AiReplyErrorFrame:
        await self._tools.bus.flushed()  # its deltas are on their way before its final frame
        delay = RETRY_FIRST_S
        while True:
            try:
                message = await self._tools.sequencer.end_reply(op)
            except Exception as exc:
                self._tools.metrics.reply_store_retries.inc()
                log.warning("could not store the end of a reply; retrying", error=type(exc).__name__, retry_s=delay)
            else:
                error = ErrorDetail(code=op.error.code, message=op.error.message) if op.error else None
                return final_reply_frame(
                    op.record_id,
                    op.session_id,
                    op.user_message_id,
                    op.text,
                    message,
                    op.outcome.finish_reason,
                    error,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._give_up.wait(), delay)
            if self._give_up.is_set():
                return self._unstored()
            delay = min(delay * 2, RETRY_MAX_S)

    def _unstored(self) -> AiReplyErrorFrame:
        """Told when the outcome could not be stored before the process stops (recovery closes the record)."""
        error = Interrupted("the reply's end could not be stored")
        frame = AiReplyErrorFrame(
            record_id=self.record_id,
            session_id=self.session_id,
            user_message_id=self.user_message.message_id,
            error=ErrorDetail(code=error.code, message=error.message),
            message=None,
        )
        self._tools.bus.publish(Event(self.session_id, frame))
        return frame

    def _publish(self, frame: AiReplyStartFrame | AiReplyDeltaFrame) -> None:
        for listener in self._listeners:
            listener.put(frame)
        self._tools.bus.publish(Event(self.session_id, frame))


def stopped(reason: Stop) -> Outcome:
    if reason is Stop.CANCELLED:
        return Outcome(RecordStatus.CANCELLED, "cancelled")
    return Outcome(RecordStatus.FAILED, Interrupted.code, Interrupted("the server shut down during the reply"))


def refusal(error: ImsvcError) -> Outcome:
    """The outcome of a reply that could not be queued."""
    return Outcome(RecordStatus.FAILED, Interrupted.code if isinstance(error, Interrupted) else "error", error)
