"""Validation of names that reach a path or a query: tenants, session ids, response ids.

A name is 1-128 characters from ``A-Z a-z 0-9 . _ : @ -`` and does not start with a dot,
so it can never be a path separator, a parent reference, a hidden file or an SQL fragment.
Every name is checked here before it is used.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidInput

NAME_RULE = "1 to 128 characters from A-Z a-z 0-9 . _ : @ -, not starting with a dot"
_NAME = re.compile(r"[A-Za-z0-9_:@\-][A-Za-z0-9._:@\-]{0,127}")
DEFAULT_TENANT = "default"


def short_repr(value: Any) -> str:
    """``value`` as an error line shows it: its repr, cut to 60 characters."""
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def check_name(value: Any, what: str = "name") -> str:
    """``value`` if it is a valid name, else InvalidInput naming ``what`` (e.g. "session id")."""
    if type(value) is not str or _NAME.fullmatch(value) is None:
        raise InvalidInput(f"{what} {short_repr(value)} is not valid", hint=f"a {what} is {NAME_RULE}")
    return value


def check_tenant(value: Any) -> str:
    return check_name(DEFAULT_TENANT if value is None else value, "tenant")


URL_SCHEMES = ("postgresql://", "postgres://")


def is_url(target: Any) -> bool:
    """Whether a store location is a PostgreSQL URL (anything else is a directory)."""
    return isinstance(target, str) and target[:13].lower().startswith(URL_SCHEMES)


def url_problem(url: str) -> str | None:
    """What is wrong with a postgresql:// URL's shape, or None (libpq checks the rest when connecting).
    ``postgresql://`` alone (or ``postgresql://user@``) names no host and no database: libpq would read
    what is left of it as key=value text and answer 'missing "=" after "postgresql:"'."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None  # reported when the URL is split (agentstate/sql/pg_conn.py)
    if not host and not parts.path.strip("/") and not parts.query:
        return f"the PostgreSQL URL {redact_url(url)!r} names no host and no database"
    return None


URL_HINT = "write it as postgresql://user[:password]@host[:port]/database[?schema=NAME]"


def redact_url(url: str) -> str:
    """The URL without its password (for messages, logs and reprs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://<unreadable URL>"
    if "@" not in parts.netloc or ":" not in parts.netloc.rsplit("@", 1)[0]:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def shown(target: object) -> str:
    """A store location as it may be shown: a directory as given, a URL without its password."""
    return redact_url(target) if is_url(target) else str(target)


DEFAULT_DIR = ".agentstate"


def default_dir() -> str:
    """The store directory when none is given: $AGENTSTATE_DIR, else ./.agentstate."""
    import os

    return os.environ.get("AGENTSTATE_DIR") or DEFAULT_DIR
