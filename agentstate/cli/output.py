"""Printing for the CLI: one line on stderr for an error, text or JSON on stdout (undecodable bytes
shown as escapes, never a crash), pages of a list, and stdout failures named as such."""

from __future__ import annotations

import sys
from typing import Any


def _printable(text: str) -> str:
    """``text`` with undecodable bytes (from a non-UTF-8 argv or file name) shown as escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


printable = _printable


def out(text: str) -> None:
    text = text if text.endswith("\n") else text + "\n"
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        sys.stdout.write(_printable(text).encode(sys.stdout.encoding or "ascii", "backslashreplace")
                         .decode(sys.stdout.encoding or "ascii"))


def _sanitize(value: Any) -> Any:
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_sanitize(k): _sanitize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sanitize(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    import orjson

    try:
        data = orjson.dumps(value)
    except TypeError:  # a path or message holding bytes that are not UTF-8
        data = orjson.dumps(_sanitize(value))
    sys.stdout.flush()
    sys.stdout.buffer.write(data + b"\n")
    sys.stdout.flush()


def err(message: str) -> None:
    line = " ".join(_printable(str(message)).split())  # one line, always
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()


def fancy() -> bool:
    """Rich output: stdout is a terminal."""
    return sys.stdout.isatty()


def compact(value: Any, limit: int | None = None) -> str:
    """A value as one line of JSON (sorted keys), cut to ``limit`` characters."""
    import orjson

    text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if limit is not None and len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def dumps_pretty(value: Any) -> str:
    import orjson

    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def page_json(page: Any, key: str) -> dict[str, Any]:
    return {key: [x.to_dict() for x in page.items], "next_cursor": page.next_cursor, "total": page.total}


def page_footer(page: Any, noun: str) -> str:
    shown = f"{len(page.items)} of {page.total} {noun}(s)"
    return shown + (f"; next page: --cursor {page.next_cursor}" if page.next_cursor else "")


def write_stdout(data: bytes) -> None:
    """Write ``data`` to stdout; a failure (``> /dev/full``) is reported as about stdout, not the store."""
    try:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as e:
        e.agentstate_stdout = True  # type: ignore[attr-defined]
        raise
