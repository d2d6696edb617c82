"""structlog set-up: one JSON object per line on stderr."""

from __future__ import annotations

import logging
import sys

import structlog


def setup(level: str = "info", json: bool = True) -> None:
    lvl = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # One write per line (print() writes the newline apart): the workers share
        # stderr, and two lines written at once must not end up on one.
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def query_logger() -> structlog.typing.FilteringBoundLogger:
    """The query log's logger (``log.query_sample``): at info whatever ``log.level``,
    since the sample rate is what turns it on; formatted as every other line, less
    the steps a query event never needs (context variables, exceptions), which
    are a fifth of its cost."""
    skip = (structlog.contextvars.merge_contextvars, structlog.processors.format_exc_info)
    processors = [p for p in structlog.get_config()["processors"] if p not in skip]
    logger: structlog.typing.FilteringBoundLogger = structlog.wrap_logger(
        None,
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        cache_logger_on_first_use=True,
    )
    return logger
