"""open_state(target): the one way from a target (a directory or a postgresql:// URL) to a state store.

``StateStore(url)`` keeps working for compatibility: StateStore's metaclass sends a URL here.
"""

from __future__ import annotations

import os
from typing import Any

from ..names import default_dir, is_url


def open_state(target: str | os.PathLike[str] | None = None, *, lock_timeout: float | str | None = None,
               files: Any = None) -> Any:
    """The state store at ``target``: a directory (default $AGENTSTATE_DIR or ./.agentstate) gives a
    :class:`~agentstate.state.store.StateStore`, a ``postgresql://`` URL a
    :class:`~agentstate.state.pgstore.PgStateStore` (same contract)."""
    if target is not None and is_url(target):
        from .pgstore import PgStateStore

        return PgStateStore(str(target), lock_timeout=lock_timeout)
    from .store import StateStore

    return StateStore(target if target is not None else default_dir(), lock_timeout=lock_timeout, files=files)
