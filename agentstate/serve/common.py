"""What every route module shares: the server's context, JSON responses, query parameters, times."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import AgentStateError
from .errors import ApiError, bad_request, from_library, render

log = logging.getLogger("agentstate.serve")


@dataclass
class Context:
    config: Any
    verifier: Any
    stores: Any
    metrics: Any


def json(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


def unix(iso: str) -> int:
    """A stored ISO timestamp ("...Z") as Unix seconds (what the OpenAI API returns)."""
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}, not {raw[:40]!r}", param=name)
    return int(raw)


def query_choice(request: Request, name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw not in choices:
        raise bad_request(f"{name} must be one of {', '.join(choices)}, not {raw[:40]!r}", param=name)
    return raw


def query_str(request: Request, name: str) -> str | None:
    raw = request.query_params.get(name)
    if raw is not None and not 0 < len(raw) <= 256:
        raise bad_request(f"{name} must be 1 to 256 characters", param=name)
    return raw


def list_query(request: Request) -> tuple[int, str, str | None]:
    """An OpenAI list's query: ``limit`` (1-100, default 20), ``order`` (asc/desc, default desc), ``after``."""
    return (query_int(request, "limit", 20, 1, 100), query_choice(request, "order", "desc", ("asc", "desc")),
            query_str(request, "after"))


class Route(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return render(request.url.path, e)
            except AgentStateError as e:
                return render(request.url.path, from_library(e))
            except (StarletteHTTPException, RequestValidationError):
                raise
            except Exception as e:  # noqa: BLE001 - never a traceback to the client; the log has the type
                log.error("internal error on %s %s: %s", request.method, request.url.path, type(e).__name__,
                          exc_info=log.isEnabledFor(logging.DEBUG))
                return render(request.url.path, ApiError(500, "internal error; nothing was changed by this request"))

        return guarded
