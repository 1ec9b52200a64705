"""Every error agentstate raises, each with the CLI exit code it maps to.

The exit codes are a stable, documented contract (README, ``agentstate --help``):
0 success, 1 error, 2 usage, 3 lock not acquired, 4 corrupted with no valid backup,
5 conflict, 6 not found.
"""

from __future__ import annotations

from typing import Any


class AgentStateError(Exception):
    """Base class. ``code`` is a stable machine name, ``exit_code`` the CLI's exit status."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        out.update(self.details)
        out["exit_code"] = self.exit_code
        return out

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}; {self.hint}"


class InvalidInput(AgentStateError, ValueError):
    """Bad input: malformed JSON, a value JSON cannot hold exactly, a bad address."""

    code = "invalid_input"


class StorageError(AgentStateError, OSError):
    """An I/O operation on the store failed (ENOSPC, EIO, EACCES, ...). The message says what is known:
    the stored state is unchanged, or (a failed directory fsync after the rename, ``outcome`` "unknown")
    the new version may or may not survive a crash."""

    code = "io_error"


class StateLocked(AgentStateError):
    """The lock was not acquired within the timeout. ``holder`` is the holder record (a dict) if known."""

    code = "locked"
    exit_code = 3

    def __init__(self, message: str, *, holder: dict[str, Any] | None = None, **details: Any) -> None:
        super().__init__(message, holder=holder, **details)
        self.holder = holder


class StateCorrupted(AgentStateError):
    """Neither the state file nor its backup holds a valid document. ``tried`` lists (path, reason)."""

    code = "corrupted"
    exit_code = 4

    def __init__(self, message: str, *, tried: list[tuple[str, str]] | None = None, **details: Any) -> None:
        tried = tried or []
        super().__init__(message, tried=[{"path": p, "reason": r} for p, r in tried], **details)
        self.tried = tried


class ConflictError(AgentStateError):
    """The state is not what the caller expected (serial, lineage, lock ID)."""

    code = "conflict"
    exit_code = 5


class FormatTooNew(ConflictError):
    """The state file was written by a newer agentstate; it is refused and never overwritten."""

    code = "format_too_new"


class NotFound(AgentStateError, LookupError):
    """An address (or lock) that does not exist."""

    code = "not_found"
    exit_code = 6


class Interrupted(AgentStateError):
    """SIGINT or SIGTERM arrived: the command finished or abandoned its write (``.outcome`` says which),
    removed its temp files and released the lock. Exit 130 (SIGINT) or 143 (SIGTERM)."""

    code = "interrupted"
    exit_code = 130

    def __init__(self, message: str, *, signal_number: int = 2, outcome: str = "abandoned", **details: Any) -> None:
        super().__init__(message, signal=signal_number, outcome=outcome, **details)
        self.exit_code = 128 + signal_number
        self.outcome = outcome
