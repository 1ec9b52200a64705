"""Apply and plan: diff a desired set of resources against the state, and apply it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .errors import InvalidInput, NotFound
from .store import StateStore

_MISSING = object()


@dataclass
class Plan:
    """What an apply changes. ``serial`` is the state's serial after it (or now, for a plan)."""

    serial: int
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated or self.deleted)

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "created": self.created, "updated": self.updated, "deleted": self.deleted}


def parse_spec(data: bytes | str, what: str = "spec") -> dict[str, Any]:
    """A spec's resources from its JSON bytes: ``{"resources": {ADDRESS: VALUE, ...}}``."""
    spec = codec.parse_json(data, what)
    return spec_resources(spec, what)


def spec_resources(spec: Any, what: str = "spec") -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidInput(f'{what} must be a JSON object like {{"resources": {{...}}}}, not {_kind(spec)}')
    unknown = sorted(set(spec) - {"resources"})
    if unknown:
        raise InvalidInput(f"{what} has unknown field(s) {', '.join(map(repr, unknown))}; only 'resources' is allowed")
    if "resources" not in spec:
        raise InvalidInput(f'{what} has no "resources" field')
    resources = spec["resources"]
    if not isinstance(resources, dict):
        raise InvalidInput(f'{what}: "resources" must be an object, not {_kind(resources)}')
    for address in resources:
        codec.check_address(address)
    codec.encode_value(resources)  # NaN, depth, 64-bit integers
    return resources


def parse_assignment(item: str) -> tuple[str, Any]:
    """``ADDRESS=VALUE``; a VALUE that is not valid JSON is taken as a string."""
    address, sep, raw = item.partition("=")
    if not sep:
        raise InvalidInput(f"--set {item!r}: expected ADDRESS=VALUE")
    codec.check_address(address)
    try:
        value = codec.parse_json(raw, f"value of {address!r}")
    except InvalidInput as e:
        if "64-bit" in str(e) or "nested too deeply" in str(e) or "UTF-8" in str(e):
            raise
        value = raw
    codec.encode_value(value)
    return address, value


def _kind(v: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number"
    )


def _same(a: Any, b: Any) -> bool:
    # Type-exact: 1, 1.0 and true are different values in the file.
    return a is b or codec.encode_value(a) == codec.encode_value(b)


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
    for address, value in after.items():
        old = current.get(address, _MISSING)
        if old is _MISSING:
            plan.created.append(address)
        elif not _same(old, value):
            plan.updated.append(address)
    plan.deleted = [a for a in current if a not in after]
    plan.created.sort()
    plan.updated.sort()
    plan.deleted.sort()
    return after, plan


def plan(
    store: StateStore,
    resources: dict[str, Any] | None = None,
    *,
    sets: Iterable[tuple[str, Any]] = (),
    deletes: Iterable[str] = (),
) -> Plan:
    """What ``apply`` would change. Reads without a lock; writes nothing."""
    state = store.read()
    _, p = diff(state.resources, resources, list(sets), list(deletes))
    p.serial = state.serial
    return p


def apply(
    store: StateStore,
    resources: dict[str, Any] | None = None,
    *,
    sets: Iterable[tuple[str, Any]] = (),
    deletes: Iterable[str] = (),
    expect_serial: int | None = None,
    lock_timeout: float | str | None = None,
    on_wait: Callable[[Any], None] | None = None,
    operation: str = "apply",
) -> Plan:
    """Make the state's resources equal ``resources`` (if given), then apply sets and deletes."""
    sets, deletes = list(sets), list(deletes)
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
    addresses = [codec.check_address(a) for a in addresses]
    with store.transaction(lock_timeout, operation="rm", expect_serial=expect_serial, on_wait=on_wait) as state:
        missing = [a for a in addresses if a not in state.resources]
        if missing:
            raise NotFound(f"no resource at {', '.join(map(repr, missing))}", addresses=missing)
        after, p = diff(state.resources, None, (), addresses)
        state.resources = after
    p.serial = state.serial
    return p
