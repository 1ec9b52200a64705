"""The library's apply/plan/remove: the same spec shape as the CLI, and every mistake an AgentStateError."""

from __future__ import annotations

from pathlib import Path

import pytest

import agentstate
from agentstate.errors import AgentStateError, InvalidInput
from agentstate.state import planner


@pytest.fixture
def store(tmp_path: Path) -> agentstate.StateStore:
    s = agentstate.StateStore(tmp_path / "s")
    agentstate.apply(s, {"resources": {"a": 1, "b": {"x": [1, 2]}, "c": "hello"}})
    return s


def files(store: agentstate.StateStore) -> dict[str, bytes]:
    d = Path(store.path)
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.endswith(".lock")}


def test_apply_takes_the_cli_spec_shape(store: agentstate.StateStore) -> None:
    p = agentstate.apply(store, {"resources": {"a": 2, "d": True}})
    assert p.to_dict() == {"serial": 2, "created": ["d"], "updated": ["a"], "deleted": ["b", "c"]}
    assert store.read().resources == {"a": 2, "d": True}


def test_apply_takes_a_plain_mapping_by_keyword(store: agentstate.StateStore) -> None:
    p = agentstate.apply(store, resources={"a": 1, "z": 0})
    assert p.to_dict() == {"serial": 2, "created": ["z"], "updated": [], "deleted": ["b", "c"]}
    assert agentstate.plan(store, resources={"a": 1, "z": 0}).changed is False
    assert agentstate.plan(store, {"resources": {"a": 1}}).deleted == ["z"]


@pytest.mark.parametrize("call", [
    lambda s: agentstate.apply(s, {"agent.a": {"model": "y"}}),  # a plain mapping given as the spec
    lambda s: agentstate.apply(s, {"resources": {"a": 1}, "agent.b": 2}),
    lambda s: agentstate.apply(s, resources={"resources": {"a": 1}}),  # a spec given as resources=
    lambda s: agentstate.apply(s, {"resources": {"a": 1}}, resources={"a": 1}),
    lambda s: agentstate.apply(s, "notadict"),
    lambda s: agentstate.apply(s, ["a"]),
    lambda s: agentstate.apply(s, {"resources": "x"}),
    lambda s: agentstate.apply(s, {"resources": {"a": float("nan")}}),
    lambda s: agentstate.apply(s, {"resources": {1: "x"}}),
    lambda s: agentstate.apply(s, resources="x"),
    lambda s: agentstate.apply(s, sets={"a": 2}),
    lambda s: agentstate.apply(s, sets=[("a",)]),
    lambda s: agentstate.apply(s, sets=[("a", {1, 2})]),
    lambda s: agentstate.apply(s, deletes="abc"),
    lambda s: agentstate.apply(s, deletes=[None]),
    lambda s: agentstate.plan(s, {"a": 1}),
    lambda s: agentstate.plan(s, "notadict"),
    lambda s: agentstate.remove(s, "abc"),
    lambda s: agentstate.remove(s, [3]),
    lambda s: agentstate.remove(s, ["a"], expect_serial="1"),
    lambda s: agentstate.apply(s, sets=[("a", 5)], expect_serial=True),
    lambda s: agentstate.apply(s.path, {"resources": {}}),
    lambda s: agentstate.plan(None, {"resources": {}}),
])
def test_a_shape_mix_up_is_refused_and_changes_nothing(store: agentstate.StateStore, call) -> None:
    before = files(store)
    with pytest.raises(InvalidInput) as info:
        call(store)
    e = info.value
    assert isinstance(e, AgentStateError) and e.exit_code == 1
    assert e.to_dict()["exit_code"] == 1 and e.to_dict()["code"] == "invalid_input"
    assert files(store) == before
    assert store.read().resources == {"a": 1, "b": {"x": [1, 2]}, "c": "hello"}


def test_a_resource_named_resources_goes_through_the_spec(store: agentstate.StateStore) -> None:
    agentstate.apply(store, {"resources": {"resources": {"k": 1}}})
    assert store.read().resources == {"resources": {"k": 1}}


def test_plan_carries_old_and_new_values(store: agentstate.StateStore) -> None:
    p = agentstate.plan(store, {"resources": {"a": 2, "n": [1]}})
    assert p.values == {"a": (1, 2), "n": (None, [1]), "b": ({"x": [1, 2]}, None), "c": ("hello", None)}
    assert "values" not in p.to_dict()


@pytest.mark.parametrize("raw,ok", [
    ('{"a": 1, "a": 2}', False),
    ('{"a": {"b": 1, "b": 1}}', False),
    ('[{"k": 1}, {"k": 1}]', True),
    ('{"a:": "b:", "c": {"d": ":"}}', True),
    ('{"a\\\\": 1, "a\\"": 2}', True),
    ('{"\\u00e9": 1, "é": 2}', False),
])
def test_parse_json_refuses_duplicate_keys(raw: str, ok: bool) -> None:
    if ok:
        planner.parse_json(raw, "input")
        planner.parse_json(raw.encode(), "input")
    else:
        with pytest.raises(InvalidInput, match="twice"):
            planner.parse_json(raw.encode(), "input")


@pytest.mark.parametrize("raw,expected", [
    ("hello", "hello"), ("", ""), ("v1.2", "v1.2"), ("1", 1), ("-2", -2), ("true", True), ("null", None),
    ('"1.2.3"', "1.2.3"), ("[1]", [1]), ("yes", "yes"), ("not json {", "not json {"),
])
def test_parse_assignment(raw: str, expected) -> None:
    assert planner.parse_assignment(f"k={raw}") == ("k", expected)


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "True", "None", "1.2.3", '{"a":1,}', "[1,", "+1",
                                 "1e400", '{"a": 1, "a": 2}'])
def test_parse_assignment_refuses_broken_json(raw: str) -> None:
    assert planner.looks_like_json(raw)
    with pytest.raises(InvalidInput):
        planner.parse_assignment(f"k={raw}")


# -- duplicate keys, property-based: refused exactly when some object repeats a key ---------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_keys = st.text(alphabet=st.sampled_from('ab:"\\\\ é\u2028{}[],'), min_size=0, max_size=4)
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10), _keys)


def _pairs_tree(children):
    return st.one_of(st.lists(children, max_size=4).map(lambda xs: ("list", xs)),
                     st.lists(st.tuples(_keys, children), max_size=4).map(lambda ps: ("obj", ps)))


_trees = st.recursive(_scalars.map(lambda v: ("scalar", v)), _pairs_tree, max_leaves=20)


def _render(node, ensure_ascii: bool) -> tuple[str, bool]:
    """JSON text of a tree whose objects are pair lists (keys may repeat), and whether a key repeats."""
    import json

    kind, v = node
    if kind == "scalar":
        return json.dumps(v, ensure_ascii=ensure_ascii), False
    if kind == "list":
        parts = [_render(x, ensure_ascii) for x in v]
        return "[" + ", ".join(p for p, _ in parts) + "]", any(d for _, d in parts)
    parts = [(json.dumps(k, ensure_ascii=ensure_ascii), _render(x, ensure_ascii)) for k, x in v]
    dup = len({k for k, _ in v}) != len(v) or any(d for _, (_, d) in parts)
    return "{" + ", ".join(f"{k} : {p}" for k, (p, _) in parts) + "}", dup


@settings(max_examples=300, deadline=None)
@given(tree=_trees, ensure_ascii=st.booleans())
def test_duplicate_keys_refused_exactly_when_present(tree, ensure_ascii: bool) -> None:
    text, dup = _render(tree, ensure_ascii)
    if dup:
        with pytest.raises(InvalidInput, match="twice"):
            planner.parse_json(text.encode(), "input")
    else:
        planner.parse_json(text.encode(), "input")


def test_get(store: agentstate.StateStore) -> None:
    assert planner.get(store, "b") == {"x": [1, 2]}
    with pytest.raises(agentstate.NotFound) as info:
        planner.get(store, "zz")
    assert info.value.exit_code == 6 and info.value.to_dict()["addresses"] == ["zz"]
    with pytest.raises(InvalidInput):
        planner.get(store, "")
