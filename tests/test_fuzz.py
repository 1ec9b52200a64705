"""Fuzzing the two parsers that read bytes from outside: state files and specs.

State files (generated, then truncated, bit-flipped, spliced, replaced by garbage, by
valid JSON of the wrong shape, or by a valid checksum over a wrong shape) are written to
a real store directory and loaded with ``StateStore(dir).read()``. Allowed outcomes:
the primary's data, exactly as written; the backup's data, only when the primary is not
a valid document; ``StateCorrupted``, only when the backup is not valid either;
``FormatTooNew``, only for a JSON object whose format_version is an integer above 2.
Anything else (another exception, a changed value) is a violation.

Specs: ``planner.parse_spec`` on arbitrary and mutated bytes returns resources that
round-trip and equal an independent exact parse, or raises InvalidInput.

Case counts are printed (``pytest -s``) and written to $AGENTSTATE_REPORT_DIR/fuzz.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonsame import same

from agentstate import FormatTooNew, InvalidInput, StateCorrupted, StateStore
from agentstate.state import codec, planner

SLOW = os.environ.get("AGENTSTATE_SLOW") == "1"
SETTINGS = settings(max_examples=1000 if SLOW else 40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CASES: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()  # "kind/outcome" -> count, to show the fuzzers reach every branch
VIOLATIONS: list[str] = []

INT_MIN, INT_MAX = -(2**63), 2**64 - 1
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(INT_MIN, INT_MAX), st.sampled_from([INT_MIN, INT_MAX, 0]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda c: st.one_of(st.lists(c, max_size=4), st.dictionaries(st.text(max_size=6), c, max_size=4)),
    max_leaves=15,
)
addresses = st.text(min_size=1, max_size=12).filter(lambda a: not any(ord(ch) < 32 or 127 <= ord(ch) <= 159 for ch in a))
resources_st = st.dictionaries(addresses, json_values, max_size=5)



def violation(kind: str, msg: str) -> None:
    VIOLATIONS.append(f"{kind}: {msg}")
    pytest.fail(f"{kind}: {msg}")


def document(serial: int, resources: dict, lineage: str = "lineage-fuzz") -> bytes:
    return codec.encode_document(serial=serial, lineage=lineage, updated_at="2024-02-02T00:00:00Z",
                                 resources_bytes=codec.encode_value(resources))


def checksummed(body: bytes) -> bytes:
    return codec.PREFIX + hashlib.sha256(body).hexdigest().encode() + b'",' + body


def independent(data: bytes) -> Any:
    """An exact parse of the bytes by the standard library (None if it is not strict JSON)."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (ValueError, RecursionError):
        return None


def newer_format(data: bytes) -> bool:
    doc = independent(data)
    v = doc.get("format_version") if isinstance(doc, dict) else None
    return isinstance(v, int) and not isinstance(v, bool) and v > codec.FORMAT_VERSION


@pytest.fixture(scope="module")
def scratch():
    d = Path(tempfile.mkdtemp(prefix="agentstate-fuzz-"))
    yield d
    shutil.rmtree(d)
    report()


def report() -> None:
    total = sum(CASES.values())
    print(f"\n[fuzz] {total} cases, {len(VIOLATIONS)} violations; outcomes: {dict(sorted(OUTCOMES.items()))}")
    report_dir = os.environ.get("AGENTSTATE_REPORT_DIR")
    if report_dir and total:
        os.makedirs(report_dir, exist_ok=True)
        with open(os.path.join(report_dir, "fuzz.json"), "w") as f:
            json.dump({"test": "tests/test_fuzz.py", "cases": total, "violations": len(VIOLATIONS),
                       "by_kind": dict(CASES), "outcomes": dict(sorted(OUTCOMES.items())), "violation_list": VIOLATIONS[:20]}, f, indent=2)


# -- state files ---------------------------------------------------------------------------


def load_and_judge(kind: str, d: Path, primary: bytes, written: dict | None, backup: bytes | None,
                   backup_version: tuple[int, dict] | None) -> str:
    """Write the files, read() them, judge the outcome. ``written`` = the primary's content if it is valid.

    Returns the outcome's name.
    """
    CASES[kind] += 1
    for name in ("state.json", "state.json.bak"):
        (d / name).unlink(missing_ok=True)
    (d / "state.json").write_bytes(primary)
    if backup is not None:
        (d / "state.json.bak").write_bytes(backup)
    listing = sorted(os.listdir(d))
    try:
        got = StateStore(d).read()
    except StateCorrupted as e:
        if backup_version is not None:
            violation(kind, f"StateCorrupted although the backup is valid: {e}")
        if [p for p, _ in e.tried] != [str(d / "state.json"), str(d / "state.json.bak")]:
            violation(kind, f"StateCorrupted does not name both files: {e.tried}")
        outcome = "corrupted"
    except FormatTooNew:
        if not newer_format(primary):
            violation(kind, f"FormatTooNew for a file that is not a newer format: {primary[:80]!r}")
        outcome = "too-new"
    except Exception as e:  # noqa: BLE001 - any other exception is the finding
        violation(kind, f"unexpected {type(e).__name__}: {e} for {primary[:80]!r}")
    else:
        if got.source == "state":
            if written is None:
                violation(kind, f"read() accepted a file that is not what was written: {primary[:100]!r}")
            if not (same(got.resources, written["resources"]) and got.serial == written["serial"]
                    and got.lineage == written["lineage"]):
                violation(kind, f"silent change: wrote {written}, read {got}")
            outcome = "primary"
        elif got.source == "backup":
            if written is not None:
                violation(kind, "a valid primary was passed over for the backup")
            if backup_version is None or (got.serial, got.resources) != backup_version:
                violation(kind, f"backup data changed: {got}")
            outcome = "backup"
        else:
            violation(kind, f"read() returned source {got.source!r} although state.json exists")
    if sorted(os.listdir(d)) != listing:
        violation(kind, "read() changed the directory")
    OUTCOMES[f"{kind}/{outcome}"] += 1
    return outcome


def mutate(data: bytes, how: str, draw) -> bytes:
    n = len(data)
    if how == "truncate":
        return data[: draw(st.integers(0, n - 1))]
    if how == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, n - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if how == "splice":
        i = draw(st.integers(0, n))
        return data[:i] + draw(st.binary(min_size=1, max_size=8)) + data[i + draw(st.integers(0, 8)):]
    if how == "zero-tail":  # a torn write: the size persisted, the end of the data did not
        i = draw(st.integers(0, n - 1))
        return data[:i] + bytes(n - i)
    raise AssertionError(how)


STATE_KINDS = ["valid", "truncate", "flip", "splice", "zero-tail", "garbage", "json-wrong-shape",
               "checksum-wrong-shape", "format1-mutated"]


@st.composite
def state_files(draw, kind: str):
    """(kind, primary bytes, primary content if valid, backup bytes, backup version if valid)."""
    resources = draw(resources_st)
    serial = draw(st.integers(0, 2**40))
    good = document(serial, resources)
    content = {"serial": serial, "lineage": "lineage-fuzz", "resources": resources}
    if kind == "valid":
        primary, written = good, content
    elif kind in ("truncate", "flip", "splice", "zero-tail"):
        primary = mutate(good, kind, draw)
        written = content if primary == good else None
    elif kind == "garbage":
        primary, written = draw(st.binary(max_size=300)), None
    elif kind == "json-wrong-shape":
        value = draw(st.one_of(json_values, st.fixed_dictionaries(
            {}, optional={"format_version": json_values | st.integers(0, 5), "serial": json_values,
                          "lineage": json_values, "resources": json_values, "checksum": json_values})))
        primary, written = codec.encode_value(value), None
        if isinstance(value, dict) and valid_shape(value, 1):
            written = value  # a valid format 1 document after all
    elif kind == "checksum-wrong-shape":
        fields: dict[str, Any] = {"format_version": 2, "serial": serial, "lineage": "lineage-fuzz",
                                  "updated_at": "2024-02-02T00:00:00Z", "resources": resources}
        key = draw(st.sampled_from([*fields, "extra"]))
        if draw(st.booleans()):
            fields.pop(key, None)
        else:
            fields[key] = draw(st.one_of(json_values, st.integers(-(2**70), 2**70), st.sampled_from([-1, 3, 2.0])))
        body = json.dumps(fields, separators=(",", ":"), ensure_ascii=draw(st.booleans())).encode()[1:] + b"\n"
        primary = checksummed(body)
        written = fields if valid_shape(fields, 2) else None
    else:  # format1-mutated
        v1 = b'{"format_version":1,"serial":%d,"lineage":"lineage-fuzz","resources":%s}' % (
            serial, codec.encode_value(resources))
        primary = mutate(v1, draw(st.sampled_from(["truncate", "flip", "splice"])), draw)
        written = None
        doc = independent(primary)
        if primary == v1:
            written = content
        elif isinstance(doc, dict) and valid_shape(doc, 1):
            written = doc  # a mutation may yield another valid format 1 document
    backup_kind = draw(st.sampled_from(["valid", "valid", "missing", "corrupt"]))
    bres = draw(resources_st)
    backup = {"valid": document(max(serial - 1, 0), bres), "missing": None,
              "corrupt": document(1, bres)[:-3]}[backup_kind]
    bversion = (max(serial - 1, 0), bres) if backup_kind == "valid" else None
    return kind, primary, written, backup, bversion


def valid_shape(doc: dict, version: int) -> bool:
    """An independent statement of the document shape the loader must accept (and nothing else)."""
    if version == 2:
        if set(doc) != {"format_version", "serial", "lineage", "updated_at", "resources"}:
            return False
        if not isinstance(doc["updated_at"], str):
            return False
    elif not ({"format_version", "serial", "lineage", "resources"} <= set(doc) <= {
            "format_version", "serial", "lineage", "resources", "updated_at"}):
        return False
    if type(doc["format_version"]) is not int or doc["format_version"] != version:
        return False
    if type(doc["serial"]) is not int or not 0 <= doc["serial"] <= INT_MAX:
        return False
    if not isinstance(doc["lineage"], str) or not isinstance(doc["resources"], dict):
        return False
    try:
        codec.encode_value(doc["resources"])  # within 64 bits
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("kind", STATE_KINDS)
def test_state_files_are_loaded_recovered_or_refused(scratch, kind):
    @SETTINGS
    @given(case=state_files(kind))
    def run(case):
        kind, primary, written, backup, bversion = case
        load_and_judge(kind, scratch, primary, written, backup, bversion)

    run()


def test_every_single_byte_flip_and_truncation_falls_back_to_the_backup(scratch):
    """Exhaustive for one document: each of its bytes flipped, and each truncation."""
    resources = {"agent.a": {"model": "m", "n": 2**64 - 1, "neg": -(2**63), "f": 0.1, "u": "zürich ✓"}, "b": [1, None]}
    good = document(9, resources)
    backup = document(8, {"old": True})
    for i in range(len(good)):
        flipped = bytearray(good)
        flipped[i] ^= 0x01 if i % 2 else 0x80
        assert load_and_judge("exhaustive-flip", scratch, bytes(flipped), None, backup, (8, {"old": True})) == "backup"
    for n in range(len(good)):
        assert load_and_judge("exhaustive-truncate", scratch, good[:n], None, backup, (8, {"old": True})) == "backup"
        assert load_and_judge("exhaustive-truncate", scratch, good[:n], None, None, None) == "corrupted"


# -- specs ---------------------------------------------------------------------------------


def judge_spec(kind: str, data: bytes) -> str:
    CASES[kind] += 1
    try:
        res = planner.parse_spec(data)
    except InvalidInput:
        OUTCOMES[f"{kind}/refused"] += 1
        return "refused"
    except Exception as e:  # noqa: BLE001
        violation(kind, f"parse_spec raised {type(e).__name__}: {e} for {data[:80]!r}")
    if not isinstance(res, dict):
        violation(kind, f"parse_spec returned {type(res).__name__}")
    ref = independent(data)
    if not (isinstance(ref, dict) and set(ref) == {"resources"} and same(res, ref["resources"])):
        violation(kind, f"parse_spec result differs from an exact parse: {data[:100]!r}")
    again = planner.parse_spec(codec.encode_value({"resources": res}))
    if not same(again, res):
        violation(kind, "resources do not round-trip")
    OUTCOMES[f"{kind}/accepted"] += 1
    return "accepted"


SPEC_KINDS = ["spec-valid", "spec-mutated", "spec-garbage", "spec-json", "spec-text", "spec-bigint"]


@st.composite
def specs(draw, kind: str):
    if kind == "spec-garbage":
        return kind, draw(st.binary(max_size=200))
    if kind == "spec-json":
        return kind, codec.encode_value(draw(st.one_of(json_values, st.fixed_dictionaries(
            {"resources": json_values}, optional={"extra": json_values}))))
    if kind == "spec-text":
        return kind, draw(st.text(max_size=100)).encode("utf-8", "surrogatepass")
    good = json.dumps({"resources": draw(resources_st)}, ensure_ascii=draw(st.booleans()),
                      indent=draw(st.sampled_from([None, 2]))).encode()
    if kind == "spec-valid":
        return kind, good
    if kind == "spec-bigint":
        n = draw(st.one_of(st.integers(INT_MAX + 1, 10**40), st.integers(-(10**40), INT_MIN - 1)))
        spec = {"resources": {**draw(resources_st), "big": [draw(json_values), "__BIG__"]}}
        return kind, json.dumps(spec).encode().replace(b'"__BIG__"', b"%d" % n)
    return kind, mutate(good, draw(st.sampled_from(["truncate", "flip", "splice"])), draw)


@pytest.mark.parametrize("kind", SPEC_KINDS)
def test_specs_are_parsed_exactly_or_refused(scratch, kind):
    @SETTINGS
    @given(case=specs(kind))
    def run(case):
        kind, data = case
        outcome = judge_spec(kind, data)
        if kind == "spec-valid":
            assert outcome == "accepted"
        if kind == "spec-bigint":
            assert outcome == "refused"

    run()


@pytest.mark.parametrize("data", [
    b"", b" ", b"\xef\xbb\xbf{\"resources\": {}}", b"\x00", b'{"resources": {"a": NaN}}',
    b'{"resources": {"a": 1e999}}', b'{"resources": {"": 1}}', b'{"resources": {"a\\u0000": 1}}',
    b'{"resources": []}', b'{"resources": {}, "x": 1}', b"{}", b"[]", b'{"resources": {"a": "\\ud800"}}',
    b'{"resources": {"a": ' + b"[" * 300 + b"]" * 300 + b"}}",
    b'{"resources": {"a": ' + b"9" * 5000 + b"}}",
    b'{"resources": {"a": 18446744073709551616}}', b'{"resources": {"a": -9223372036854775809}}',
])
def test_spec_edge_cases_are_refused(scratch, data):
    assert judge_spec("spec-edge", data) == "refused"


def test_spec_edge_values_are_kept(scratch):
    data = b'{"resources": {"a": 18446744073709551615, "b": -9223372036854775808, "c": "18446744073709551616", ' \
           b'"d": 1.0, "e": -0.0, "f": [true, false, null], "\\u00fc": {"": {}}}}'
    assert judge_spec("spec-edge", data) == "accepted"
    res = planner.parse_spec(data)
    assert type(res["a"]) is int and res["a"] == 2**64 - 1 and res["c"] == "18446744073709551616"
