"""Structured logs: JSON lines on stderr for journald, or a console format for people."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _processors(fmt: str) -> list[Any]:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "console":
        return [*shared, structlog.dev.ConsoleRenderer(colors=False)]
    return [
        *shared,
        structlog.processors.dict_tracebacks,
        structlog.processors.JSONRenderer(sort_keys=False),
    ]


def configure_logging(
    level: str = "info", fmt: str = "json", stream: TextIO | None = None
) -> structlog.typing.FilteringBoundLogger:
    """Configures structlog for this process and returns the root logger.

    Components receive this logger (or a child bound with more context)
    rather than reaching for a global one.
    """
    stream = stream or sys.stderr
    structlog.configure(
        processors=_processors(fmt),
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger("edge-agent")
    return logger
