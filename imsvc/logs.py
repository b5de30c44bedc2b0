"""structlog configuration; context (request_id, user_id, session_id, record_id) rides on contextvars."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import Token
from types import TracebackType
from typing import Any

import structlog


def configure_logging(level: str, fmt: str) -> None:
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(),  # stdout as it is when a line is written
        cache_logger_on_first_use=False,  # configure_logging may run again (tests build many apps)
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger


class bound:
    """Bind log context for a block (a frame, a reply), then restore what was there.

    structlog's own `bound_contextvars` reads every context variable on entry; on the path of every
    WebSocket frame that cost more than storing the message. Tokens restore the previous values.
    """

    __slots__ = ("_tokens", "_values")

    def __init__(self, **values: Any) -> None:
        self._values = values
        self._tokens: Mapping[str, Token[Any]] = {}

    def __enter__(self) -> None:
        self._tokens = structlog.contextvars.bind_contextvars(**self._values)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        structlog.contextvars.reset_contextvars(**self._tokens)
