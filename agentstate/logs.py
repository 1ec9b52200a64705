"""Logging setup: readable text on a terminal, JSON lines for CI. Library code only uses ``logging``.

``logging`` itself (about 3 ms of imports) loads at the first record a module asks about, not at start:
modules take their logger from ``getLogger`` here, a stand-in that becomes the stdlib logger on first use,
and the CLI asks for its configuration with ``configure(..., lazy=True)``, applied at that moment (at
once when ``logging`` is already loaded). A command that logs nothing never loads it."""

from __future__ import annotations

import _thread
import sys
import time
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's own values, without importing it

_pending: tuple[str, str, Any] | None = None  # a lazy configure() not applied yet: (level, fmt, stream)
_applying = _thread.allocate_lock()  # two threads' first records apply it once


class _Logger:
    """Stands for ``logging.getLogger(name)`` until its first use, then forwards to it (each method
    looked up once, then kept on the instance)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        import logging

        ready()
        value = getattr(logging.getLogger(self.name), attr)
        if callable(value):
            self.__dict__[attr] = value  # a bound method of the one logger of that name: stays valid
        return value

    def __repr__(self) -> str:
        return f"<agentstate logger {self.name}>"


def ready() -> None:
    """Apply a lazy configure() still pending: for code that is about to use ``logging`` directly."""
    if _pending is not None:
        with _applying:
            if _pending is not None:
                configure(*_pending)


def getLogger(name: str) -> Any:  # noqa: N802 - the stdlib's name, as a drop-in
    """The logger ``name``, loading ``logging`` at its first use."""
    return _Logger(name)


def _json_formatter() -> Any:
    import logging

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

    return JsonFormatter()


def configure(level: str = "warning", fmt: str = "text", stream: Any = None, *, lazy: bool = False) -> Any:
    """Send the ``agentstate`` loggers to stderr at ``level`` in ``fmt`` ("text" or "json"); the handler.
    ``lazy=True``: if ``logging`` is not loaded yet, only remember it (applied, and the stream chosen, by
    the first logger used) and return None."""
    global _pending
    if lazy and "logging" not in sys.modules:
        _pending = (level, fmt, stream)
        return None
    _pending = None
    import logging

    logger = logging.getLogger("agentstate")
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_json_formatter())
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
