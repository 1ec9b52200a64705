"""What goes into a session, checked before any lock is taken: items (strict JSON objects; a message's
role and content), titles, seqs; and the title derived from the first user message."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import InvalidInput

MAX_ITEM_BYTES = 1 << 20
ROLES = ("system", "developer", "user", "assistant", "tool")
TITLE_CHARS = 50
_encode_value: Any = None  # agentstate.state.codec.encode_value, once an item was encoded
MAX_TITLE_CHARS = 200  # a title given or imported is at most this long (InvalidInput beyond)
MAX_SEQ = 2**63 - 1  # the largest integer both SQL engines store: seqs, limits and expect_seq stay within
_TEXT_PARTS = ("text", "input_text", "output_text")


def _text_of(content: Any) -> str | None:
    """The text of a message's content (a string, or the text parts of a list), or None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(texts) if texts else None
    return None


def _check_message(item: dict[str, Any], where: str) -> None:
    role = item.get("role")
    if role is None and "role" not in item:
        return
    if role not in ROLES:
        raise InvalidInput(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
    if "content" not in item or item["content"] is None:
        if role == "assistant":  # e.g. a chat-completions tool call: no content
            return
        raise InvalidInput(f"{where}: a {role} message needs content")
    content = item["content"]
    if isinstance(content, str):
        if not content.strip():
            raise InvalidInput(f"{where}: the message's text content is empty")
        return
    if not isinstance(content, list):
        raise InvalidInput(f"{where}: content must be a string or a list of content parts")
    if not content:
        raise InvalidInput(f"{where}: the message's content is an empty list")
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise InvalidInput(f"{where}: content part {i} is not an object")
        if part.get("type") in _TEXT_PARTS or ("type" not in part and "text" in part):
            text = part.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InvalidInput(f"{where}: content part {i} has empty text")


def encode_item(value: Any, max_bytes: int = MAX_ITEM_BYTES, where: str = "item", check_message: bool = True) -> bytes:
    """The stored bytes of one item: a strict-JSON object, a valid message if it has a role (unless
    ``check_message`` is False), at most ``max_bytes`` encoded. InvalidInput otherwise."""
    global _encode_value
    if _encode_value is None:  # here: a reader's start-up does without the codec
        from ..state.codec import encode_value as _encode_value
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} is not a JSON object (got {type(value).__name__})")
    if check_message:
        _check_message(value, where)
    try:
        data = _encode_value(value)
    except InvalidInput as e:
        raise InvalidInput(f"{where}: {e.message}", hint=e.hint) from None
    if len(data) > max_bytes:
        raise InvalidInput(f"{where} is {len(data)} bytes encoded, over the limit of {max_bytes}",
                           hint="split it, or raise max_item_bytes")
    return data


def _title_from(items: list[dict[str, Any]]) -> str | None:
    """The first user message's text cut at TITLE_CHARS (NUL characters dropped: no backend stores them)."""
    for item in items:
        if item.get("role") == "user":
            text = _text_of(item.get("content"))
            if text and "\x00" in text:
                text = text.replace("\x00", "")
            if text and text.strip():
                return text[:TITLE_CHARS]
    return None


def _check_title(title: Any) -> str | None:
    if title is not None and not isinstance(title, str):
        raise InvalidInput(f"title must be a string (got {type(title).__name__})")
    if title is not None and "\x00" in title:
        raise InvalidInput("title must not contain NUL characters")
    if title is not None and len(title) > MAX_TITLE_CHARS:
        raise InvalidInput(f"title is {len(title)} characters long; at most {MAX_TITLE_CHARS} are allowed")
    return title


def _check_seq(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_SEQ:
        raise InvalidInput(f"{what} {value!r:.40} is not valid", hint=f"{what} is an integer from 0 to {MAX_SEQ}")
    return value




def _is_timestamp(value: str) -> bool:
    """An ISO timestamp as agentstate writes them (UTC, microseconds, 'Z'), so text order is time order."""
    if len(value) != 27 or not value.endswith("Z"):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True

