"""What to do next, for an error that does not say it yet: one place for the hints people see."""

from __future__ import annotations

from .errors import AgentStateError, InvalidInput

ADDRESS_RULE = "an address is 1 to 256 characters, valid UTF-8, without control characters"
SPEC_SHAPE = 'fix the spec: strict JSON shaped {"resources": {ADDRESS: VALUE, ...}}'
SET_RULE = "use --set ADDRESS=VALUE (`agentstate apply --help` says how VALUE is read)"


def hint_for(e: AgentStateError) -> str | None:
    """A next step for ``e``, or None if it has one already (or none applies)."""
    if e.hint or not isinstance(e, InvalidInput):
        return None
    msg = e.message
    if msg.startswith("address"):
        return ADDRESS_RULE
    if msg.startswith("spec"):
        return SPEC_SHAPE
    if msg.startswith("--set"):
        return SET_RULE
    if "64-bit" not in msg:
        return "fix the input and retry; nothing was changed"
    return None


def add_hint(e: AgentStateError) -> None:
    """Give ``e`` a hint if it has none and one applies."""
    hint = hint_for(e)
    if hint:
        e.hint = hint
