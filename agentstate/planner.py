"""Apply and plan: diff a desired set of resources against the state, and apply it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .errors import InvalidInput, NotFound
from .store import StateStore, check_serial

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
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"value of {address!r} is not valid UTF-8") from None
    try:
        value = codec.parse_json(raw, f"value of {address!r}")
    except InvalidInput as e:
        # Only text that is not JSON at all becomes a string. JSON that cannot be stored exactly
        # (an integer beyond 64 bits, 1e400, nesting too deep) is refused, never kept as a string.
        if not _is_json(raw):
            value = raw
        elif "64-bit" in e.message:
            raise
        else:
            reason = e.message.split("JSON: ", 1)[-1]
            raise InvalidInput(
                f"value of {address!r} is JSON that cannot be stored exactly ({reason})",
                hint="pass it as a JSON string instead, e.g. --set 'ADDRESS=\"...\"'",
            ) from None
    codec.encode_value(value)
    return address, value


def _is_json(raw: str) -> bool:
    import json

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        json.loads(raw, parse_constant=constant)
    except RecursionError:
        return True  # valid so far, only deeper than Python's parser goes
    except ValueError:
        return False
    return True


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


def _not_found(missing: list[str]) -> NotFound:
    return NotFound(
        f"no resource at {', '.join(map(repr, missing))}; nothing was removed",
        hint="`agentstate list` shows the addresses",
        addresses=missing,
    )


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
    """Make the state's resources equal ``resources`` (if given), then apply sets and deletes.

    A lock-free read comes first: if it already shows the wanted resources (or a serial other
    than ``expect_serial``), the answer comes from that consistent snapshot without taking the
    lock or touching any file. Otherwise, under the lock: load, diff again, save.
    """
    sets, deletes = list(sets), list(deletes)
    for address in deletes:
        codec.check_address(address)
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
