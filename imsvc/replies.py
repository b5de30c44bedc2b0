"""The reply supervisor: owns every AI reply task of the process.

Replies outlive the socket that asked (its user may reconnect and resume). Per session they run one
at a time, in order; across sessions at most AI_MAX_CONCURRENCY at once, with up to AI_MAX_QUEUE
waiting behind them (past that: `busy`). Every reply ends in a stored state (SPEC §6): the text so far
is stored on error, timeout, cancel and shutdown, and its record never stays at status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog

from imsvc import store
from imsvc.chat import Chat
from imsvc.context import ChatMessages, build_context
from imsvc.db import Database
from imsvc.errors import Conflict, NotFound, ProviderError
from imsvc.llm import ChatModel, Completion
from imsvc.logs import get_logger
from imsvc.metrics import Metrics
from imsvc.models import Message
from imsvc.schemas import (
    AiReplyDeltaFrame,
    AiReplyErrorFrame,
    AiReplyFrame,
    AiReplySnapshotFrame,
    AiReplyStartFrame,
    ErrorDetail,
    MessageOut,
    ServerFrame,
)
from imsvc.settings import Settings

log = get_logger(__name__)

SUCCESS, FAILED, CANCELLED = 1, 2, 3


@dataclass
class Reply:
    """One reply, from queued to concluded; `text` grows as deltas arrive."""

    record_id: str
    session_id: str
    user_message: Message
    recipients: tuple[str, ...] = ()
    text: str = ""
    started: bool = False
    stop_reason: str | None = None  # "cancelled" or "interrupted", once asked to stop
    ending: bool = False  # generation is over and the outcome is being stored: too late to stop
    task: asyncio.Task[None] | None = None
    listeners: set[asyncio.Queue[ServerFrame]] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> AiReplySnapshotFrame:
        return AiReplySnapshotFrame(
            record_id=self.record_id,
            session_id=self.session_id,
            user_message_id=self.user_message.message_id,
            content=self.text,
        )


@dataclass(frozen=True)
class Outcome:
    status: int
    finish_reason: str
    error_code: str | None = None
    error_message: str | None = None


class ReplySupervisor:
    def __init__(self, settings: Settings, db: Database, chat: Chat, model: ChatModel, metrics: Metrics) -> None:
        self._metrics = metrics
        self._settings = settings
        self._db = db
        self._chat = chat
        self._model = model
        self._slots = asyncio.Semaphore(settings.ai_max_concurrency)
        self._queues: dict[str, deque[Reply]] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._replies: dict[str, Reply] = {}
        self._capacity = settings.ai_max_concurrency + settings.ai_max_queue
        self._closing = False

    # Starting

    @property
    def model_name(self) -> str:
        return self._model.model

    def enqueue(self, message: Message, record_id: str) -> bool:
        """Queue a reply whose record (status 0) is committed; False when closing or the queue is full."""
        # Room for AI_MAX_CONCURRENCY generating and AI_MAX_QUEUE waiting, whichever session they are in.
        if self._closing or len(self._replies) >= self._capacity:
            return False
        reply = Reply(record_id, message.session_id, message)
        self._replies[record_id] = reply
        self._queues.setdefault(reply.session_id, deque()).append(reply)
        if reply.session_id not in self._workers:
            worker = asyncio.create_task(self._work(reply.session_id), name=f"replies:{reply.session_id}")
            self._workers[reply.session_id] = worker
        return True

    async def refuse(self, message: Message, record_id: str) -> None:
        code = "interrupted" if self._closing else "busy"
        reply = Reply(record_id, message.session_id, message)
        if code == "busy":
            outcome = Outcome(FAILED, "error", "busy", "too many replies waiting")
        else:
            outcome = Outcome(FAILED, "interrupted", "interrupted", "the server is shutting down")
        await self._conclude(reply, outcome, None, None, Completion())

    async def _work(self, session_id: str) -> None:
        """One session's replies, one after the other."""
        queue = self._queues[session_id]
        try:
            while queue:
                async with self._slots:
                    if not queue:  # the last one was stopped while waiting for a slot
                        break
                    reply = queue.popleft()
                    reply.task = asyncio.current_task()
                    await self._run(reply)
        finally:
            del self._workers[session_id]
            del self._queues[session_id]

    # Generating

    async def _run(self, reply: Reply) -> None:
        structlog.contextvars.bind_contextvars(session_id=reply.session_id, record_id=reply.record_id)
        began = time.monotonic()
        first_token: float | None = None
        completion = Completion()
        try:
            messages = await self._context(reply)
            if reply.stop_reason is not None:  # stopped while the context was read
                raise asyncio.CancelledError
            reply.started = True
            await self._publish(
                reply,
                AiReplyStartFrame(
                    record_id=reply.record_id,
                    session_id=reply.session_id,
                    user_message_id=reply.user_message.message_id,
                ),
            )
            async with asyncio.timeout(self._settings.ai_timeout_s):
                async with contextlib.aclosing(self._model.stream(messages, completion)) as deltas:
                    async for delta in deltas:
                        self._metrics.deltas.inc()
                        if first_token is None:
                            first_token = time.monotonic()
                            self._metrics.first_token.observe(first_token - began)
                        offset = len(reply.text)
                        reply.text += delta
                        await self._publish(
                            reply,
                            AiReplyDeltaFrame(
                                record_id=reply.record_id, session_id=reply.session_id, delta=delta, offset=offset
                            ),
                        )
                        # Tokens that arrive in one read are parsed without awaiting I/O: let the sockets'
                        # senders run, so the first goes out now and not after the whole burst.
                        await asyncio.sleep(0)
            outcome = Outcome(SUCCESS, completion.finish_reason or "stop")
        except asyncio.CancelledError:
            if reply.stop_reason is None:
                raise
            # Asked to stop (cancel or shutdown), not cancelled by our owner: swallow and conclude.
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            outcome = self._stopped(reply)
        except TimeoutError:
            outcome = Outcome(FAILED, "timeout", "timeout", f"no complete reply within {self._settings.ai_timeout_s} s")
        except ProviderError as exc:
            outcome = Outcome(FAILED, "error", "provider_error", exc.message)
        except Exception:
            log.exception("reply failed")
            outcome = Outcome(FAILED, "error", "internal", "internal error")
        reply.ending = True
        await self._conclude(reply, outcome, began, first_token, completion)

    @staticmethod
    def _stopped(reply: Reply) -> Outcome:
        if reply.stop_reason == "cancelled":
            return Outcome(CANCELLED, "cancelled")
        return Outcome(FAILED, "interrupted", "interrupted", "the server shut down during the reply")

    async def _context(self, reply: Reply) -> ChatMessages:
        """The model's messages for this reply, also stored as the record's request_content."""
        settings = self._settings
        message = reply.user_message
        async with self._db.reader() as s:
            history = await store.context_messages(s, reply.session_id, message.seq, settings.ai_context_messages)
            members = await store.member_ids(s, reply.session_id)
        reply.recipients = tuple(members)
        messages = build_context(
            history, members, settings.ai_bot_user_id, settings.ai_system_prompt, settings.ai_context_chars
        )
        request = {
            "model": self._model.model,
            "messages": messages,
            "stream": True,
            "temperature": settings.ai_temperature,
            "max_tokens": settings.ai_max_tokens,
        }
        async with self._db.transaction() as s:
            await store.update_record(s, reply.record_id, request_content=json.dumps(request, ensure_ascii=False))
        return messages

    async def _publish(self, reply: Reply, frame: ServerFrame) -> None:
        for listener in reply.listeners:
            listener.put_nowait(frame)
        await self._chat.publish(reply.recipients, frame)

    async def _conclude(
        self, reply: Reply, outcome: Outcome, began: float | None, first_token: float | None, completion: Completion
    ) -> None:
        now = time.monotonic()
        record = {
            "status": outcome.status,
            "finish_reason": outcome.finish_reason,
            "duration_ms": int((now - began) * 1000) if began is not None else 0,
            "first_token_ms": int((first_token - began) * 1000) if first_token and began else None,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            # "code: detail", so that a finished record can be told again as the same `ai_reply_error`
            "error_message": f"{outcome.error_code}: {outcome.error_message}" if outcome.error_code else None,
        }
        message_id = reply.user_message.message_id

        def frame(message: MessageOut | None) -> ServerFrame:
            if outcome.error_code is None:
                return AiReplyFrame(
                    message_id=message.message_id if message else None,
                    content=reply.text,
                    user_message_id=message_id,
                    record_id=reply.record_id,
                    session_id=reply.session_id,
                    message=message,
                    finish_reason=outcome.finish_reason,
                )
            return AiReplyErrorFrame(
                record_id=reply.record_id,
                session_id=reply.session_id,
                user_message_id=message_id,
                error=ErrorDetail(code=outcome.error_code, message=outcome.error_message or outcome.error_code),
                message=message,
            )

        try:
            final = await self._chat.conclude_reply(
                reply.session_id, reply.record_id, self._settings.ai_bot_user_id, reply.text, record, frame
            )
        except Exception:
            log.exception("could not store the end of a reply")
            final = None
        finally:
            self._replies.pop(reply.record_id, None)
            reply.done.set()
        for listener in reply.listeners:
            if final is not None:
                listener.put_nowait(final)
        self._metrics.replies.labels(str(outcome.status)).inc()
        log.info(
            "reply ended",
            status=outcome.status,
            finish_reason=outcome.finish_reason,
            duration_ms=record["duration_ms"],
            first_token_ms=record["first_token_ms"],
        )

    # Stopping

    async def cancel(self, user_id: str, record_id: str) -> None:
        """Stop a reply: it ends with `ai_reply`, finish_reason "cancelled". 404 unknown/foreign, 409 finished."""
        async with self._db.reader() as s:
            record = await store.get_record(s, record_id)
            if record is None or await store.member_role(s, record.session_id, user_id) is None:
                raise NotFound("no such AI record")
        reply = self._replies.get(record_id)
        if reply is None or reply.stop_reason is not None or reply.ending:
            raise Conflict("this reply has already ended")
        await self._stop(reply, "cancelled")

    async def _stop(self, reply: Reply, reason: str) -> None:
        reply.stop_reason = reason
        queue = self._queues.get(reply.session_id)
        if reply.task is None and queue is not None and reply in queue:
            queue.remove(reply)
            await self._conclude(reply, self._stopped(reply), None, None, Completion())
        elif reply.task is not None and reply.started and not reply.ending:
            reply.task.cancel()
        # otherwise it is reading its context: it sees stop_reason next and concludes itself

    def member_added(self, session_id: str, user_id: str) -> None:
        """A member added while a reply runs receives the rest of it (queued replies read members when they start)."""
        for reply in self.running(session_id):
            if user_id not in reply.recipients:
                reply.recipients = (*reply.recipients, user_id)

    def running(self, session_id: str) -> list[Reply]:
        """The replies generating in a session now, for snapshots."""
        return [r for r in self._replies.values() if r.session_id == session_id and r.started]

    def get(self, record_id: str) -> Reply | None:
        return self._replies.get(record_id)

    async def shutdown(self, grace_s: float) -> None:
        """Let running replies finish for `grace_s`, then end the rest as `interrupted`, partial text stored."""
        self._closing = True
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers, timeout=grace_s)
        for reply in list(self._replies.values()):
            if reply.stop_reason is None and not reply.ending:
                await self._stop(reply, "interrupted")
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers)
        await self._model.aclose()

    async def interrupt_orphans(self) -> None:
        """At start-up: records a crash left at status 0 become failed (`interrupted`)."""
        try:
            async with self._db.transaction() as s:
                count = await store.interrupt_unfinished(s)
        except Exception:  # start anyway: /ready reports the database, and nothing can run without it
            log.exception("could not check for interrupted replies")
            return
        if count:
            log.warning("replies interrupted by an earlier crash", count=count)

    @contextlib.asynccontextmanager
    async def listen(self, reply: Reply) -> AsyncIterator[asyncio.Queue[ServerFrame]]:
        """Frames of a running reply from now on (deltas, then the final frame), for the SSE stream."""
        queue: asyncio.Queue[ServerFrame] = asyncio.Queue()
        reply.listeners.add(queue)
        try:
            yield queue
        finally:
            reply.listeners.discard(queue)
