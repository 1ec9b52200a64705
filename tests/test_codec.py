"""The codec: strict JSON values, the checksummed document, format upgrades and refusals."""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonsame import same

from agentstate import FormatTooNew, InvalidInput, StateStore
from agentstate.state import codec
from agentstate.state.codec import CorruptDocument

SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"
EXAMPLES = 1000 if SLOW else 60
FAST = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

INT_MIN, INT_MAX = -(2**63), 2**64 - 1
EDGE_INTS = [INT_MIN, INT_MIN + 1, -1, 0, 1, 2**53 + 1, 2**63 - 1, 2**63, INT_MAX - 1, INT_MAX]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=INT_MIN, max_value=INT_MAX),
    st.sampled_from(EDGE_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=5), st.dictionaries(st.text(max_size=8), children, max_size=5)),
    max_leaves=25,
)
resources_st = st.dictionaries(st.text(min_size=1, max_size=20), json_values, max_size=6)
big_ints = st.one_of(st.integers(min_value=INT_MAX + 1, max_value=10**60), st.integers(min_value=-(10**60), max_value=INT_MIN - 1))



def document(resources: dict, serial: int = 7, lineage: str = "lin-1", updated_at: str = "2024-05-01T00:00:00Z") -> bytes:
    return codec.encode_document(
        serial=serial, lineage=lineage, updated_at=updated_at, resources_bytes=codec.encode_value(resources)
    )


def checksummed(body: bytes) -> bytes:
    """A document with a valid checksum over an arbitrary body (the part after the header)."""
    return codec.PREFIX + hashlib.sha256(body).hexdigest().encode() + b'",' + body


def body_of(fields: dict[str, Any]) -> bytes:
    """The body for a document whose fields after "checksum" are ``fields`` (in this order)."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()[1:] + b"\n"


# -- round trips -----------------------------------------------------------------------------


@FAST
@given(json_values)
def test_any_value_round_trips_through_encode_value_and_parse_json(value):
    encoded = codec.encode_value(value)
    assert same(codec.parse_json(encoded), value)
    assert same(json.loads(encoded), value)  # plain JSON, readable by anything
    assert codec.encode_value(codec.parse_json(encoded)) == encoded  # canonical: stable


@FAST
@given(resources_st, st.integers(min_value=0, max_value=INT_MAX), st.text(), st.text())
def test_any_document_round_trips(resources, serial, lineage, updated_at):
    data = codec.encode_document(
        serial=serial, lineage=lineage, updated_at=updated_at, resources_bytes=codec.encode_value(resources)
    )
    assert data.startswith(codec.PREFIX) and data.endswith(b"}\n") and data.count(b"\n") == 1
    d = codec.decode_document(data)
    assert (d.format_version, d.serial, d.lineage, d.updated_at) == (2, serial, lineage, updated_at)
    assert same(d.resources, resources)
    assert d.resources_bytes == codec.encode_value(resources)


def test_edge_values_round_trip_exactly():
    value = {
        "ints": EDGE_INTS,
        "floats": [0.1, -0.0, 1.0, 1e308, 5e-324, -2.5e-10, 1.7976931348623157e308],
        "unicode": ["zürich", "日本語", "emoji 🦀", "\u0000 nul \u001f", 'quote " back \\ slash', "\u2028\u2029"],
        "nested": {"a": [{"b": [[], {}, None, True, False]}]},
        "": "empty key",
    }
    data = document(value)
    got = codec.decode_document(data).resources
    assert same(got, value)
    assert type(got["ints"][-1]) is int and got["ints"][-1] == 2**64 - 1
    assert type(got["ints"][0]) is int and got["ints"][0] == -(2**63)
    assert type(got["floats"][2]) is float  # 1.0 stays a float, never becomes 1


# -- refusals: NaN, Infinity, big integers -------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad):
    for value in (bad, [1, bad], {"a": {"b": [bad]}}, {"a": None, "b": bad}):
        with pytest.raises(InvalidInput, match="NaN or Infinity"):
            codec.encode_value(value)


@pytest.mark.parametrize("text", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"[1, NaN]", b"1e400", b"[-1e999]"])
def test_parse_json_refuses_nan_and_infinity(text):
    with pytest.raises(InvalidInput):
        codec.parse_json(text)


@pytest.mark.parametrize("n", [2**64, -(2**63) - 1, 10**30, -(10**30)])
def test_encode_value_refuses_ints_beyond_64_bits(n):
    for value in (n, [n], {"a": {"b": n}}):
        with pytest.raises(InvalidInput, match="64-bit"):
            codec.encode_value(value)


@pytest.mark.parametrize(
    "text",
    [
        b"18446744073709551616",  # 2**64: 20 digits, orjson alone would give a float
        b"99999999999999999999",
        b"-9223372036854775809",  # -(2**63)-1: 19 digits after the minus
        b"-9999999999999999999",
        b"123456789012345678901234567890",
        b'{"a": [1, {"b": 18446744073709551616}]}',
        b'{"a": "18446744073709551616", "b": -9223372036854775809}',
    ],
)
def test_parse_json_refuses_ints_beyond_64_bits_never_floats(text):
    with pytest.raises(InvalidInput, match="64-bit"):
        codec.parse_json(text)


def test_parse_json_keeps_edge_ints_exact_and_big_numbers_in_strings_alone():
    assert codec.parse_json(b"18446744073709551615") == 2**64 - 1
    assert type(codec.parse_json(b"18446744073709551615")) is int
    assert codec.parse_json(b"-9223372036854775808") == -(2**63)
    got = codec.parse_json(b'{"id": "123456789012345678901234567890", "neg": "-9223372036854775809", "n": 5}')
    assert got == {"id": "123456789012345678901234567890", "neg": "-9223372036854775809", "n": 5}
    # A float written with 20+ digits is a float: only integers are checked.
    assert codec.parse_json(b"123456789012345678901.5") == 123456789012345678901.5
    assert codec.parse_json("[1.5e300]") == [1.5e300]


@FAST
@given(json_values, big_ints)
def test_big_int_anywhere_is_refused(value, n):
    with pytest.raises(InvalidInput, match="64-bit"):
        codec.encode_value([value, {"x": n}])
    text = b'{"v": %s, "n": %d}' % (codec.encode_value(value), n)
    with pytest.raises(InvalidInput, match="64-bit"):
        codec.parse_json(text)
    # As a string it is just text.
    assert codec.parse_json(b'{"n": "%d"}' % n) == {"n": str(n)}


@pytest.mark.parametrize(
    "text, why",
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'"\xc3\x28"', "UTF-8"),
        (b'"\\ud800"', "UTF-8"),
        (b"{", "not valid JSON"),
        (b"{'a': 1}", "not valid JSON"),
        (b"[1,]", "not valid JSON"),
        (b"[01]", "not valid JSON"),
        (b"1 2", "not valid JSON"),
    ],
)
def test_parse_json_refuses_malformed_input(text, why):
    with pytest.raises(InvalidInput, match=why):
        codec.parse_json(text)


def test_encode_value_refuses_other_types_keys_and_deep_nesting():
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    for value, why in [
        ({1: "a"}, "keys must be strings"),
        ({"a": {2: "b"}}, "keys must be strings"),
        (deep, "nested too deeply"),
        ({"a": {1, 2}}, "not JSON"),
        (b"bytes", "not JSON"),
        (object(), "not JSON"),
        ("\ud800", "UTF-8"),
    ]:
        with pytest.raises(InvalidInput, match=why):
            codec.encode_value(value)


# -- the checksum catches every single-byte change -------------------------------------------------


@settings(max_examples=200 if SLOW else 25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resources_st, st.integers(min_value=1, max_value=255), st.integers(min_value=0, max_value=7))
def test_every_byte_flip_and_truncation_is_detected(resources, mask, bit):
    data = document(resources)
    for i in range(len(data)):
        for m in (mask, 1 << bit):
            flipped = bytes(bytearray(data[:i]) + bytes([data[i] ^ m]) + data[i + 1 :])
            # A flip of the version digit claims a newer format; it is told from a real one
            # because the file verifies as format 2: damaged, not newer.
            with pytest.raises(CorruptDocument):
                codec.decode_document(flipped)
    for n in range(len(data)):
        with pytest.raises(CorruptDocument):
            codec.decode_document(data[:n])
    for extra in (b"\n", b" ", b"x", b"}"):
        with pytest.raises(CorruptDocument):
            codec.decode_document(data + extra)


def test_a_digest_that_is_not_sha256_of_the_body_is_refused():
    data = document({"a": 1})
    digest = data[len(codec.PREFIX) : len(codec.PREFIX) + 64]
    other = hashlib.sha256(b"something else").hexdigest().encode()
    with pytest.raises(CorruptDocument, match="checksum mismatch"):
        codec.decode_document(data.replace(digest, other))
    with pytest.raises(CorruptDocument, match="checksum mismatch"):
        codec.decode_document(data.replace(digest, digest.upper()))


# -- format 1 is upgraded, newer formats are refused ------------------------------------------------

V1 = b'{"format_version":1,"serial":3,"lineage":"old-lineage","resources":{"a":{"x":[1,2]},"b":"z\xc3\xbcrich"}}'


def test_format_1_is_read_and_upgraded_by_the_next_changing_save(tmp_path):
    d = codec.decode_document(V1)
    assert (d.format_version, d.serial, d.lineage, d.updated_at) == (1, 3, "old-lineage", None)
    assert d.resources == {"a": {"x": [1, 2]}, "b": "zürich"}
    (tmp_path / "state.json").write_bytes(V1)
    store = StateStore(tmp_path)
    st = store.read()
    assert (st.serial, st.lineage, st.format_version, st.source) == (3, "old-lineage", 1, "state")
    with store.transaction():
        pass  # no change: the file is left as it is
    assert (tmp_path / "state.json").read_bytes() == V1
    with store.transaction() as s:
        s.resources["c"] = 1
    data = (tmp_path / "state.json").read_bytes()
    assert data.startswith(codec.PREFIX)
    d2 = codec.decode_document(data)
    assert (d2.format_version, d2.serial, d2.lineage) == (2, 4, "old-lineage")
    assert d2.resources == {"a": {"x": [1, 2]}, "b": "zürich", "c": 1}
    assert codec.decode_document((tmp_path / "state.json.bak").read_bytes()).format_version == 1


def test_format_1_with_updated_at_keeps_it():
    d = codec.decode_document(b'{"format_version":1,"serial":0,"lineage":"l","resources":{},"updated_at":"t"}')
    assert (d.serial, d.updated_at, d.resources) == (0, "t", {})


NEWER = [
    checksummed(body_of({"format_version": 3, "serial": 1, "lineage": "l", "updated_at": "t", "resources": {}})),
    # a newer format that hashes differently: recognised as newer before the checksum is judged
    checksummed(body_of({"format_version": 3, "serial": 1, "lineage": "l", "updated_at": "t", "resources": {}}))
    .replace(b"sha256:", b"sha256:f", 1),
    b'{"checksum":"blake3:' + b"ab" * 32 + b'","format_version":3,"serial":1,"lineage":"l","resources":{}}\n',
    b'{"checksum":"sha256:' + b"0" * 64 + b'","format_version":12,"body":"zstd:KLUv/QBYAQA="}\n',
    # a newer format laid out like format 2 but hashed another way: not a damaged format-2 file
    codec.PREFIX + hashlib.sha256(b"v3" + document({"a": 1})[86:]).hexdigest().encode() + b'",'
    + document({"a": 1})[86:].replace(b'"format_version":2,', b'"format_version":3,'),
    checksummed(body_of({"format_version": 99, "something": "else"})),
    b'{"format_version":3,"serial":1,"lineage":"l","resources":{}}',
    b'{"format_version":4,"layout":"columnar"}\n',
]


@pytest.mark.parametrize("data", NEWER)
def test_newer_format_is_refused_and_never_overwritten(tmp_path, data):
    with pytest.raises(FormatTooNew) as ei:
        codec.decode_document(data)
    assert ei.value.exit_code == 5 and ei.value.details["format_version"] > 2
    state = tmp_path / "state.json"
    state.write_bytes(data)
    (tmp_path / "state.json.bak").write_bytes(document({"old": True}, serial=1))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    store = StateStore(tmp_path, lock_timeout=5)
    with pytest.raises(FormatTooNew):
        store.read()
    ran = False
    with pytest.raises(FormatTooNew):
        with store.transaction() as s:
            ran = True
            s.resources["x"] = 1
    assert not ran
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir() if p.name != "state.json.lock"}
    assert after == before


# -- wrong shapes are corrupt ---------------------------------------------------------------

GOOD = {"format_version": 2, "serial": 1, "lineage": "l", "updated_at": "t", "resources": {}}


def _without(key: str) -> dict:
    return {k: v for k, v in GOOD.items() if k != key}


WRONG_SHAPES = {
    "resources is a list": dict(GOOD, resources=[]),
    "resources is a string": dict(GOOD, resources="x"),
    "resources is null": dict(GOOD, resources=None),
    "negative serial": dict(GOOD, serial=-1),
    "bool serial": dict(GOOD, serial=True),
    "float serial": dict(GOOD, serial=1.0),
    "string serial": dict(GOOD, serial="1"),
    "serial beyond 64 bits": dict(GOOD, serial=2**64),
    "lineage is a number": dict(GOOD, lineage=5),
    "updated_at is null": dict(GOOD, updated_at=None),
    "extra field": dict(GOOD, extra=1),
    "format_version is a string": dict(GOOD, format_version="2"),
    "format_version 0": dict(GOOD, format_version=0),
    "format_version true": dict(GOOD, format_version=True),
    "format_version 2.0": dict(GOOD, format_version=2.0),
    "big int in resources": dict(GOOD, resources={"a": 2**64}),
    "big negative int in resources": dict(GOOD, resources={"a": [-(2**63) - 1]}),
    **{f"missing {k}": _without(k) for k in GOOD},
}


@pytest.mark.parametrize("name", list(WRONG_SHAPES))
def test_valid_checksum_over_a_wrong_shape_is_corrupt(name):
    with pytest.raises(CorruptDocument, match="wrong shape|unknown format_version|fields"):
        codec.decode_document(checksummed(body_of(WRONG_SHAPES[name])))


def test_the_good_shape_helper_really_makes_a_valid_document():
    assert codec.decode_document(checksummed(body_of(GOOD))).serial == 1


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b"[1, 2]",
        b'"state"',
        b"null",
        b"42",
        b"{}",
        b'{"serial": 1}',
        b'{"format_version":1,"serial":-1,"lineage":"l","resources":{}}',
        b'{"format_version":true,"serial":1,"lineage":"l","resources":{}}',
        b'{"format_version":1.0,"serial":1,"lineage":"l","resources":{}}',
        b'{"format_version":1,"serial":true,"lineage":"l","resources":{}}',
        b'{"format_version":1,"serial":1,"lineage":"l","resources":[]}',
        b'{"format_version":1,"serial":1,"lineage":"l"}',
        b'{"format_version":1,"serial":1,"resources":{}}',
        b'{"format_version":1,"serial":1,"lineage":"l","resources":{},"extra":0}',
        b'{"format_version":1,"serial":1,"lineage":"l","resources":{"a":18446744073709551616}}',
        b'{"format_version":2,"serial":1,"lineage":"l","updated_at":"t","resources":{}}',  # no checksum
        b"\x00\x00\x00\x00",
        b"\xff" * 100,
        b"",
    ],
)
def test_other_wrong_shapes_are_corrupt(data):
    with pytest.raises(CorruptDocument):
        codec.decode_document(data)


def test_check_address():
    assert codec.check_address("agent.a/b c") == "agent.a/b c"
    for bad, why in [("", "empty"), ("a" * 257, "limit"), ("a\nb", "control"), ("a\x7fb", "control"), (5, "string"),
                     ("\ud800", "UTF-8")]:
        with pytest.raises(InvalidInput, match=why):
            codec.check_address(bad)
    assert codec.check_address("a" * 256)


@pytest.mark.parametrize("data", [
    # the header claims a newer format but the bytes are not a JSON document: damage, not newer
    b'{"checksum":"sha256:' + b"0" * 64 + b'","format_version":3,"serial#:0,"resources":{}}\n',
    b'{"format_version":3,"serial":1,"lineage":"l","resources":{}',
    # header and document disagree
    b'{"format_version":3,"serial":1,"format_version":2}',
])
def test_a_header_claiming_a_newer_format_over_damaged_bytes_is_corrupt(data):
    with pytest.raises(CorruptDocument):
        codec.decode_document(data)
