"""Logging setup: readable text on a terminal, JSON lines for CI. Library code only uses ``logging``."""

from __future__ import annotations

import logging
import sys
import time

LEVELS = ("debug", "info", "warning", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        import orjson

        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def configure(level: str = "warning", fmt: str = "text", stream=None) -> logging.Handler:
    """Send the ``agentstate`` loggers to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    logger = logging.getLogger("agentstate")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("agentstate: %(levelname)s: %(message)s"))
    for h in list(logger.handlers):
        if getattr(h, "_agentstate", False):
            logger.removeHandler(h)
    handler._agentstate = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    return handler
