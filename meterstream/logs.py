"""Structured logging (structlog) for every process: JSON lines when not on a terminal."""

from __future__ import annotations

import logging
import sys

import structlog


def configure(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level: {level}")
    logging.basicConfig(level=numeric, stream=sys.stderr, format="%(message)s")
    # the libraries' INFO lines (group joins, subscriptions) are noise unless debugging
    for library in ("aiokafka", "asyncio", "faust", "mode"):
        logging.getLogger(library).setLevel(max(numeric, logging.WARNING))
    # faust warns "producer buffer full" whenever a batch outgrows its send buffer: back-pressure
    # working as meant, not a problem
    logging.getLogger("faust.transport.producer").setLevel(max(numeric, logging.ERROR))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
