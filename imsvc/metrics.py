"""Prometheus metrics of one app (their own registry, so that several apps can live in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.open_sockets = Gauge("imsvc_open_websockets", "WebSocket connections open", registry=self.registry)
        self.messages_stored = Counter(
            "imsvc_messages_stored", "Messages stored, AI messages included", registry=self.registry
        )
        self.batch_size = Histogram(
            "imsvc_sequencer_batch_size",
            "Events stored per transaction (group commit)",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
            registry=self.registry,
        )
        self.replies = Counter(
            "imsvc_ai_replies", "AI replies ended, by record status", ["status"], registry=self.registry
        )
        self.reply_store_retries = Counter(
            "imsvc_ai_reply_store_retries",
            "Attempts to store a reply's outcome that failed and were retried (the database unreachable)",
            registry=self.registry,
        )
        self.first_token = Histogram(
            "imsvc_ai_first_token_seconds", "From generation start to the first token", registry=self.registry
        )
        self.deltas = Counter(
            "imsvc_ai_deltas_streamed", "Text deltas received from the model and fanned out", registry=self.registry
        )
        self.request_latency = Histogram(
            "imsvc_http_request_seconds", "HTTP request latency", ["method", "status"], registry=self.registry
        )

    def watch_sockets(self, count: Callable[[], int]) -> None:
        self.open_sockets.set_function(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """Observes each HTTP request's latency by method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.metrics.request_latency.labels(scope["method"], str(status)).observe(time.perf_counter() - began)
