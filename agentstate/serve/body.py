"""Request bodies: read under a size limit (413 before any parsing), parsed with the store's rules.

A body is strict JSON as the library takes it from a file or the command line (``agentstate.codec``
and the planner's duplicate-key check): malformed JSON, NaN or Infinity, an integer past 64 bits and
an object naming a key twice are all 400 with the library's message. FastAPI never parses a body
(its 422 would not say the same thing); every route takes the raw bytes from here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..errors import InvalidInput
from .errors import ApiError, bad_request


async def read(request: Request, limit: int) -> bytes:
    """The raw body, at most ``limit`` bytes: a larger Content-Length, or a stream that runs past it, is
    413 without reading (or keeping) the rest."""
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


async def receive_body(receive: Any, length: str | None, limit: int) -> bytes:
    """``read`` on the ASGI ``receive`` itself (the append route has no Request); ``length`` is the
    Content-Length header's value, if any."""
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise bad_request("the Content-Length header is not a number")
        if int(length) > limit:
            raise ApiError(413, f"the request body is {int(length)} bytes, over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            if message["type"] == "http.disconnect":
                from starlette.requests import ClientDisconnect

                raise ClientDisconnect()
            continue
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse(raw: bytes, what: str = "the request body") -> Any:
    """Strict JSON (see the module's doc); 400 with the library's message otherwise."""
    from ..state.codec import parse_json
    from ..state.planner import check_unique_keys

    try:
        value = parse_json(raw, what)
        check_unique_keys(raw, value, what)
    except InvalidInput as e:
        raise bad_request(str(e)) from None
    return value


async def json_object(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object (400 for any other JSON value)."""
    return parse_object(await read(request, limit))


def parse_object(raw: bytes) -> dict[str, Any]:
    """``raw`` parsed (``parse``) as a JSON object (400 for any other JSON value)."""
    value = parse(raw)
    if not isinstance(value, dict):
        raise bad_request(f"the request body must be a JSON object, not {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


# -- fields ---------------------------------------------------------------------------------------------


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = False,
          default: Any = None) -> Any:
    """``body[name]`` if it has the type ``kind`` (None/absent gives ``default`` unless required); 400
    naming the field otherwise. A bool is never taken for an int."""
    if name not in body or body[name] is None:
        if required:
            raise bad_request(f"missing required parameter {name!r}", param=name)
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(_kind(k()) if k is not type(None) else "null" for k in kinds)
        raise bad_request(f"{name!r} must be {names}, not {_kind(value)}", param=name)
    return value


def only(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    """400 for a key of ``body`` that is not in ``allowed`` (a typo is not silently ignored)."""
    for key in body:
        if key not in allowed:
            raise bad_request(f"unknown parameter {key[:64]!r}", param=key[:64])
