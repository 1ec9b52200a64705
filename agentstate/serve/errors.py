"""Every failure of a request as one HTTP error: a status, a stable code and one message.

On ``/v1`` the body is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, so the
``openai`` client raises its usual exceptions; on ``/api`` (the chat API) it is
``{"error": code, "message": text}``. A library error maps by class (``status_of``); nothing else
of it (no traceback, no token, no path) reaches the body.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from ..errors import AgentStateError, ConflictError, InvalidInput, NotFound, StateLocked

# HTTP status -> OpenAI's error "type"
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    423: "server_error",
    502: "server_error",
    503: "server_error",
    500: "server_error",
}
_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict",
          413: "payload_too_large", 423: "locked", 502: "agent_failed", 503: "unavailable", 500: "internal"}


class ApiError(Exception):
    """An HTTP error: ``status``, a one-line ``message``, a machine ``code`` and the ``param`` at fault."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODES.get(status, "error")
        self.param = param
        self.headers = headers


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


def too_large(e: InvalidInput) -> bool:
    """Whether a library InvalidInput says an item or response is over the size limit (-> 413)."""
    return "over the limit" in e.message or "the limit is" in e.message


def from_library(e: AgentStateError) -> ApiError:
    """The HTTP error for a library error. StateCorrupted/StorageError/Interrupted: 503 (the store can't
    answer now); the message names no path."""
    if isinstance(e, InvalidInput):
        return ApiError(413 if too_large(e) else 400, str(e))
    if isinstance(e, NotFound):
        d = e.details
        if "item_id" in d:
            return ApiError(404, f"item {d['item_id']!r} not found in conversation {d.get('session_id')!r}")
        if "session_id" in d:
            return ApiError(404, f"conversation {d['session_id']!r} not found")
        return ApiError(404, e.message)
    if isinstance(e, ConflictError):
        return ApiError(409, e.message, code=e.code)
    if isinstance(e, StateLocked):
        return ApiError(423, "the store is busy (its writer lock was not acquired in time); retry", code="locked")
    if e.details.get("outcome") in ("unknown", "committed"):  # e.g. the disk failed to sync a committed write
        return ApiError(503, f"the store cannot confirm this request's outcome ({e.code}): it may have been stored; "
                        "read it back before retrying", code=e.code)
    return ApiError(503, f"the store cannot answer now ({e.code}); nothing was changed by this request",
                    code=e.code)


def render(path: str, e: ApiError) -> Response:
    """The response for ``e`` in the shape of the API ``path`` belongs to."""
    if path.startswith("/api/"):
        body: dict[str, Any] = {"error": e.code, "message": e.message}
    else:
        body = {"error": {"message": e.message, "type": _TYPES.get(e.status, "invalid_request_error"),
                          "param": e.param, "code": e.code}}
    return Response(orjson.dumps(body), status_code=e.status, media_type="application/json", headers=e.headers)
