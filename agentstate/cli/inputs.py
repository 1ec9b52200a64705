"""What a command reads from a file or stdin: a whole JSON document (a spec, a response) or JSON lines
(items, an import), each bounded, so that an endless or huge input (``/dev/zero``, a runaway pipe) is one
error line instead of a process that eats every byte of memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

INPUT_LIMIT = 256 << 20  # bytes of one document or one line (the Agents SDK adapter's largest item, too)


def _too_big(what: str) -> Exception:
    from ..errors import InvalidInput

    return InvalidInput(f"{what} is over {INPUT_LIMIT >> 20} MiB, the most a command reads at once")


def read_document(f: Any, what: str) -> bytes:
    """All of ``f`` (a binary file), at most INPUT_LIMIT bytes; InvalidInput past that."""
    data = f.read(INPUT_LIMIT + 1)
    if len(data) > INPUT_LIMIT:
        raise _too_big(what)
    return data


def read_lines(f: Any, what: str) -> Iterator[bytes]:
    """The lines of ``f`` (a binary file), each at most INPUT_LIMIT bytes before its newline; a line past
    that, or a read error, is the input's fault (InvalidInput, exit 1 with one line)."""
    from ..errors import InvalidInput
    from ..state.fileio import describe

    n = 0
    while True:
        try:
            line = f.readline(INPUT_LIMIT + 2)
        except OSError as e:
            raise InvalidInput(f"cannot read {what}: {describe(e)}") from None
        if not line:
            return
        n += 1
        if len(line) > INPUT_LIMIT + 1 or (len(line) == INPUT_LIMIT + 1 and not line.endswith(b"\n")):
            raise _too_big(f"{what} line {n}")
        yield line
