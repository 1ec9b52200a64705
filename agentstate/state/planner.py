"""Apply and plan: diff a desired set of resources against the state, and apply it.

The desired state is given as a spec, the same shape as the CLI's spec file,
``apply(store, {"resources": {ADDRESS: VALUE, ...}})``, or as a plain mapping with the keyword
``apply(store, resources={ADDRESS: VALUE, ...})``. A spec of any other shape is refused
(InvalidInput), so a shape mix-up can never replace every resource with a few wrong ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInput, NotFound
from ..names import short_repr
from . import codec
from .store import StateStore, check_serial

_MISSING = object()


@dataclass
class Plan:
    """What an apply changes. ``serial`` is the state's serial after it (or now, for a plan).

    ``values`` maps each changed address to ``(old, new)`` (old is None for a created one, new None
    for a deleted one): what ``agentstate plan`` prints. ``to_dict()`` leaves it out."""

    serial: int
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    values: dict[str, tuple[Any, Any]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "created": self.created, "updated": self.updated, "deleted": self.deleted}


def parse_json(data: bytes | str, what: str) -> Any:
    """Strict JSON from a user: codec.parse_json (which also refuses an object with a key given twice)."""
    return codec.parse_json(data, what)


check_unique_keys = codec.check_unique_keys  # where it lived before it served sessions and responses too


def parse_spec(data: bytes | str, what: str = "spec") -> dict[str, Any]:
    """A spec's resources from its JSON bytes: ``{"resources": {ADDRESS: VALUE, ...}}``."""
    return spec_resources(parse_json(data, what), what)


def spec_resources(spec: Any, what: str = "spec") -> dict[str, Any]:
    """The resources of a spec shaped ``{"resources": {ADDRESS: VALUE, ...}}``; InvalidInput otherwise."""
    if not isinstance(spec, Mapping):
        raise InvalidInput(f'{what} must be a JSON object like {{"resources": {{...}}}}, not {_kind(spec)}')
    unknown = sorted(set(spec) - {"resources"}, key=str)
    if unknown:
        shown = ", ".join(short_repr(k) for k in unknown[:5])
        raise InvalidInput(
            f"{what} has unknown field(s) {shown}{' ...' if len(unknown) > 5 else ''}; only 'resources' is allowed",
            hint='a spec is {"resources": {ADDRESS: VALUE, ...}}; from Python, pass a plain mapping of '
                 'resources as apply(store, resources={...})',
        )
    if "resources" not in spec:
        raise InvalidInput(f'{what} has no "resources" field')
    return check_resources(spec["resources"], f'{what}: "resources"')


def check_resources(resources: Any, what: str = "resources") -> dict[str, Any]:
    """``resources`` if it is a mapping of valid addresses to storable JSON values (as a dict)."""
    if not isinstance(resources, Mapping):
        raise InvalidInput(f"{what} must be an object mapping addresses to values, not {_kind(resources)}")
    resources = dict(resources)
    for address in resources:
        codec.check_address(address)
    codec.encode_value(resources)  # NaN, depth, 64-bit integers
    return resources


def _check_call(store: Any, expect_serial: Any = None) -> None:
    """InvalidInput for a store that is not one, or an expect_serial that is not an integer."""
    if not (hasattr(store, "read") and hasattr(store, "transaction")):
        raise InvalidInput(f"store must be a StateStore, not {type(store).__name__}",
                           hint="agentstate.StateStore(path_or_url)")
    if expect_serial is not None and (type(expect_serial) is not int or not 0 <= expect_serial <= 2**63 - 1):
        raise InvalidInput(f"expect_serial must be an integer from 0 to {2**63 - 1}, not {expect_serial!r:.40}")


def _desired(spec: Any, resources: Any) -> dict[str, Any] | None:
    """The desired resources of ``apply``/``plan``: from a spec, or from ``resources=``, or None (keep)."""
    if spec is not None and resources is not None:
        raise InvalidInput("give a spec or resources=, not both")
    if spec is not None:
        return spec_resources(spec)
    if resources is None:
        return None
    if isinstance(resources, Mapping) and list(resources) == ["resources"] and isinstance(
            resources["resources"], Mapping):
        raise InvalidInput(
            'resources= got a spec ({"resources": {...}}); pass it as the spec: apply(store, spec)',
            hint='to store one resource named "resources", use the spec {"resources": {"resources": VALUE}}',
        )
    return check_resources(resources)


# -- --set ADDRESS=VALUE ------------------------------------------------------------------------------

SET_RULE = (
    "VALUE is JSON when it looks like JSON: it starts with { [ \" a digit, - or +, or is true, false, null, "
    "NaN or Infinity (any case); it must then be valid JSON that can be stored exactly. Anything else is a "
    "plain string."
)
_JSONISH_WORDS = frozenset({"true", "false", "null", "none", "nan", "infinity", "inf"})


def looks_like_json(raw: str) -> bool:
    """Whether a --set VALUE is meant as JSON (and so must parse) rather than a plain word."""
    s = raw.strip(" \t\r\n")
    if not s:
        return False
    if s[0] in '{["-+.0123456789':
        return True
    return s.lower() in _JSONISH_WORDS


def parse_assignment(item: str) -> tuple[str, Any]:
    """``ADDRESS=VALUE``: VALUE is JSON when it looks like JSON (see SET_RULE), else a plain string."""
    address, sep, raw = item.partition("=")
    if not sep:
        raise InvalidInput(f"--set {item!r}: expected ADDRESS=VALUE")
    codec.check_address(address)
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"value of {address!r} is not valid UTF-8") from None
    if not looks_like_json(raw):
        return address, raw
    word = raw.strip(" \t\r\n")
    if word.lower().lstrip("+-") in ("nan", "infinity", "inf"):
        raise InvalidInput(f"value of {address!r} is {word}, which JSON cannot hold (no NaN or Infinity)",
                           hint=f"to store the text, quote it: --set '{address}=\"{word}\"'")
    if word.lower() in ("true", "false", "null", "none") and word not in ("true", "false", "null"):
        json_word = {"none": "null"}.get(word.lower(), word.lower())
        raise InvalidInput(f"value of {address!r} is {word}, which is not JSON (JSON writes {json_word})",
                           hint=f"write {json_word}, or quote it to store the text: --set '{address}=\"{word}\"'")
    try:
        value = parse_json(raw, f"value of {address!r}")
    except InvalidInput as e:
        if e.hint or "64-bit" in e.message:
            raise
        raise InvalidInput(
            f"{e.message} (it looks like JSON, so it must be valid JSON)",
            hint=f"fix it, or pass a string as JSON: --set '{address}=\"...\"'",
        ) from None
    codec.encode_value(value)
    return address, value


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values, type-exact (1, 1.0 and true differ); object key order does not matter."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def diff(
    current: dict[str, Any],
    desired: dict[str, Any] | None = None,
    sets: Iterable[tuple[str, Any]] = (),
    deletes: Iterable[str] = (),
) -> tuple[dict[str, Any], Plan]:
    """The resources after the change, and the plan (serial left 0). ``desired`` replaces all."""
    after = dict(current) if desired is None else dict(desired)
    for address, value in sets:
        after[address] = value
    for address in deletes:
        codec.check_address(address)
        after.pop(address, None)
    plan = Plan(serial=0)
    values = plan.values
    for address, value in after.items():
        old = current.get(address, _MISSING)
        if old is _MISSING:
            plan.created.append(address)
            values[address] = (None, value)
        elif not _same(old, value):
            plan.updated.append(address)
            values[address] = (old, value)
    plan.deleted = [a for a in current if a not in after]
    for address in plan.deleted:
        values[address] = (current[address], None)
    plan.created.sort()
    plan.updated.sort()
    plan.deleted.sort()
    return after, plan


def plan(
    store: StateStore,
    spec: Mapping[str, Any] | None = None,
    *,
    resources: Mapping[str, Any] | None = None,
    sets: Iterable[tuple[str, Any]] = (),
    deletes: Iterable[str] = (),
) -> Plan:
    """What ``apply`` would change. Reads without a lock; writes nothing."""
    _check_call(store)
    desired = _desired(spec, resources)
    sets, deletes = _edits(sets, deletes)
    state = store.read()
    _, p = diff(state.resources, desired, sets, deletes)
    p.serial = state.serial
    return p


def get(store: StateStore, address: str) -> Any:
    """The value of the resource at ``address`` (read without a lock); NotFound if there is none."""
    _check_call(store)
    codec.check_address(address)
    resources = store.read().resources
    if address not in resources:
        raise NotFound(f"no resource at {address!r}", hint="`agentstate list` shows the addresses",
                       addresses=[address])
    return resources[address]


def _not_found(missing: list[str]) -> NotFound:
    return NotFound(
        f"no resource at {', '.join(map(repr, missing))}; nothing was removed",
        hint="`agentstate list` shows the addresses",
        addresses=missing,
    )


def _edits(sets: Iterable[tuple[str, Any]], deletes: Iterable[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """``sets`` and ``deletes`` checked: (address, value) pairs of storable values, and addresses."""
    if isinstance(sets, (str, bytes, Mapping)) or isinstance(deletes, (str, bytes)):
        raise InvalidInput("sets must be (address, value) pairs and deletes a list of addresses")
    checked = []
    for item in sets:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise InvalidInput(f"a set must be an (address, value) pair, not {item!r:.60}")
        address, value = item
        codec.check_address(address)
        codec.encode_value(value)
        checked.append((address, value))
    deletes = list(deletes)
    for address in deletes:
        codec.check_address(address)
    return checked, deletes


def apply(
    store: StateStore,
    spec: Mapping[str, Any] | None = None,
    *,
    resources: Mapping[str, Any] | None = None,
    sets: Iterable[tuple[str, Any]] = (),
    deletes: Iterable[str] = (),
    expect_serial: int | None = None,
    lock_timeout: float | str | None = None,
    on_wait: Callable[[Any], None] | None = None,
    operation: str = "apply",
) -> Plan:
    """Make the state's resources equal the spec's (``{"resources": {...}}``) or ``resources`` (a plain
    mapping), if given; then apply ``sets`` ((address, value) pairs) and ``deletes`` (addresses).

    A lock-free read comes first: if it already shows the wanted resources (or a serial other
    than ``expect_serial``), the answer comes from that consistent snapshot without taking the
    lock or touching any file. Otherwise, under the lock: load, diff again, save.
    """
    _check_call(store, expect_serial)
    resources = _desired(spec, resources)
    sets, deletes = _edits(sets, deletes)
    snapshot = store.read(quiet=True)
    if snapshot.source != "backup":  # a recovery always goes on, to be persisted
        check_serial(snapshot, expect_serial)
        _, p = diff(snapshot.resources, resources, sets, deletes)
        if not p.changed:
            p.serial = snapshot.serial
            return p
    with store.transaction(lock_timeout, operation=operation, expect_serial=expect_serial, on_wait=on_wait) as state:
        after, p = diff(state.resources, resources, sets, deletes)
        if p.changed:
            state.resources = after
    p.serial = state.serial
    return p


def remove(
    store: StateStore,
    addresses: Iterable[str],
    *,
    expect_serial: int | None = None,
    lock_timeout: float | str | None = None,
    on_wait: Callable[[Any], None] | None = None,
) -> Plan:
    """Delete resources; NotFound (and nothing removed) if any address is missing."""
    _check_call(store, expect_serial)
    if isinstance(addresses, (str, bytes)):
        raise InvalidInput("addresses must be a list of addresses, not one string")
    addresses = [codec.check_address(a) for a in addresses]
    snapshot = store.read(quiet=True)  # refusals come from a lock-free snapshot: no file touched
    if snapshot.source != "backup":
        check_serial(snapshot, expect_serial)
        missing = [a for a in addresses if a not in snapshot.resources]
        if missing:
            raise _not_found(missing)
    with store.transaction(lock_timeout, operation="rm", expect_serial=expect_serial, on_wait=on_wait) as state:
        missing = [a for a in addresses if a not in state.resources]
        if missing:
            raise _not_found(missing)
        after, p = diff(state.resources, None, (), addresses)
        state.resources = after
    p.serial = state.serial
    return p
