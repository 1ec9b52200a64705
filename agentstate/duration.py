"""Durations for --lock-timeout and friends: ``500ms``, ``10s``, ``2m``, ``1h``, ``30d`` or plain seconds."""

from __future__ import annotations

import re

from .errors import InvalidInput

_DURATION = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$"  # compiled by re on first use (cached)
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int, what: str = "duration") -> float:
    """Seconds from ``500ms``, ``10s``, ``2m``, ``1h`` or plain seconds (``0`` = one attempt)."""
    if isinstance(value, bool):
        raise InvalidInput(f"invalid {what}: {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = re.match(_DURATION, str(value))
        if not m:
            raise InvalidInput(f"invalid {what} {value!r}: use e.g. 500ms, 10s, 2m, 1h, 30d or plain seconds")
        seconds = float(m.group(1)) * _UNIT[m.group(2) or "s"]
    if not (seconds >= 0) or seconds == float("inf"):
        raise InvalidInput(f"invalid {what} {value!r}: must be a finite, non-negative number of seconds")
    return seconds
