"""On-disk codec: the state document's bytes, its checksum, and strict JSON values.

Layout (format 2, see docs/format.md)::

    {"checksum":"sha256:<64 hex>","format_version":2,"serial":N,"lineage":"<uuid>",
     "updated_at":"<RFC 3339 UTC>","resources":{...}}\\n

on one line. The digest is SHA-256 of every byte after the 86-byte prefix
``{"checksum":"sha256:<hex>",`` up to the end of the file, so a flipped byte
anywhere (a value, the serial, the trailing newline) is caught without
re-serialising anything.

Values are strict JSON: NaN and Infinity are refused, integers must fit in
64 bits (signed, or unsigned up to 2**64-1) and are kept exact, keys are strings,
and JSON text given by a user (``parse_json``: state values, specs, session items,
metadata, responses) never names a key twice in one object.
"""

from __future__ import annotations

import gc
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import FormatTooNew, InvalidInput
from ..names import short_repr

FORMAT_VERSION = 2
PREFIX = b'{"checksum":"sha256:'
_DIGEST_END = len(PREFIX) + 64
HEADER_LEN = _DIGEST_END + 2  # the prefix, 64 hex digits, then '",'
_RESOURCES_KEY = b',"resources":'

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
MAX_ADDRESS_LEN = 256

# Keys keep their insertion order (sorting costs 2-3x the whole encode on large states).
_DUMPS_OPTS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# An integer beyond 64 bits, which orjson would silently turn into a float, needs 20 or more
# characters from [-0-9]. Finding such a run with bytes.translate + `in` costs a few percent of a
# parse (a regex costs more than the parse); a false positive only costs an exact re-parse.
_DIGIT_CLASS = bytes(48 if c in b"-0123456789" else 32 for c in range(256))
_DIGIT_RUN = b"0" * 20
_SCAN_CHUNK = 8 << 20  # the translated copy is made in pieces of this size at most


def _may_hold_big_int(data: bytes) -> bool:
    if len(data) < 20:
        return False
    if len(data) <= _SCAN_CHUNK:  # one translate of the whole: no slice copy
        return _DIGIT_RUN in data.translate(_DIGIT_CLASS)
    step = _SCAN_CHUNK
    for start in range(0, len(data), step):
        if _DIGIT_RUN in data[max(0, start - 19) : start + step].translate(_DIGIT_CLASS):
            return True
    return False
_NULL = re.compile(rb"null")
SMALL_HASH_BYTES = 1 << 16
_small_hashes = [0]


def sha256(data: bytes | memoryview = b"", size: int | None = None) -> Any:
    """A SHA-256 object. OpenSSL's (hashlib) is 3x faster and releases the GIL, but loading it costs
    several milliseconds, a good part of a short command's start-up (`agentstate show` on a small
    store). So the first few small hashes of a process use the builtin one; after that, or for
    ``size`` (default ``len(data)``) of 64 KiB and more, hashlib's."""
    if "hashlib" not in sys.modules and (len(data) if size is None else size) < SMALL_HASH_BYTES:
        _small_hashes[0] += 1
        if _small_hashes[0] <= 8:
            try:
                from _sha256 import sha256 as small
            except ImportError:  # pragma: no cover - other Pythons
                pass
            else:
                return small(data)
    from hashlib import sha256 as big

    return big(data)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class CorruptDocument(Exception):
    """The bytes are not a valid state document; ``str()`` says why."""


@dataclass
class Decoded:
    format_version: int  # the version found on disk (before any upgrade)
    serial: int
    lineage: str
    updated_at: str | None
    resources: dict[str, Any]
    resources_bytes: bytes | memoryview | None  # encoding of resources as in the file, when free to get


def _reject(obj: Any) -> Any:
    raise TypeError(f"Type is not JSON serializable: {type(obj).__name__}")


def _check_floats(value: Any) -> None:
    """InvalidInput if a NaN or an infinity hides anywhere in ``value``.

    Level by level, with exact type checks first: about 4x faster than a per-node isinstance
    walk (this runs on every save whose encoding contains a null)."""
    todo = [value]
    while todo:
        nxt: list[Any] = []
        more = nxt.extend
        for v in todo:
            t = type(v)
            if t is dict:
                more(v.values())
            elif t is list:
                more(v)
            elif t is float:
                if v - v != 0.0:  # nan - nan and inf - inf are nan
                    raise InvalidInput(f"value {v!r} is not allowed: JSON has no NaN or Infinity")
            elif t is str or t is int or t is bool or v is None:
                pass
            elif isinstance(v, dict):  # subclasses, which orjson encodes like their base
                more(v.values())
            elif isinstance(v, (list, tuple)):
                more(v)
            elif isinstance(v, float) and not math.isfinite(v):
                raise InvalidInput(f"value {v!r} is not allowed: JSON has no NaN or Infinity")
        todo = nxt


def encode_value(value: Any) -> bytes:
    """Compact JSON (keys in insertion order) for any strict JSON value; InvalidInput otherwise."""
    out = encode_raw(value)
    check_floats(value, out)
    return out


def check_floats(value: Any, encoded: bytes) -> None:
    """InvalidInput if ``value`` (encoded by orjson as ``encoded``) holds a NaN or an infinity.
    orjson writes those as null; only when a null appears is the walk needed."""
    if _NULL.search(encoded):  # a compiled literal search: 2-3x faster than `b"null" in` on large states
        _check_floats(value)


def encode_raw(value: Any) -> bytes:
    """encode_value without the NaN/Infinity check (the caller does it: check_floats)."""
    try:
        out = orjson.dumps(value, default=_reject, option=_DUMPS_OPTS)
    except TypeError as e:
        msg = str(e)
        if "64-bit" in msg:
            raise InvalidInput("an integer exceeds the 64-bit range; store it as a string") from None
        if "Recursion" in msg:
            raise InvalidInput("a value is nested too deeply (limit: about 250 levels)") from None
        if "Dict key" in msg or "dict key" in msg:
            raise InvalidInput("object keys must be strings") from None
        if "surrogates" in msg:
            raise InvalidInput("a string is not valid UTF-8 (lone surrogate)") from None
        raise InvalidInput(f"value is not JSON: {msg}") from None
    return out


def _check_ints(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, int) and not isinstance(v, bool):
            if not INT_MIN <= v <= INT_MAX:
                raise InvalidInput(f"integer {v} exceeds the 64-bit range; store it as a string")
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(data: bytes | str, what: str = "input") -> Any:
    """Parse strict JSON given by a user. Integers are exact; a key given twice in one object (which
    a parser would silently collapse) and anything else doubtful is InvalidInput."""
    if isinstance(data, str):
        try:
            data = data.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"{what} is not valid UTF-8") from None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        reason = str(e)
        if "utf-8" in reason.lower() or "surrogate" in reason.lower():
            raise InvalidInput(f"{what} is not valid UTF-8: {reason}") from None
        if not data.strip():
            raise InvalidInput(f"{what} is empty") from None
        raise InvalidInput(f"{what} is not valid JSON: {reason}") from None
    if _may_hold_big_int(data):
        # orjson turns integers beyond 64 bits into floats without a word; re-read exactly.
        import json

        try:
            value = json.loads(data, parse_constant=_no_constants)
        except (ValueError, RecursionError) as e:
            raise InvalidInput(f"{what} is not valid JSON: {e}") from None
        _check_ints(value)
    check_unique_keys(data, value, what)
    return value


# -- duplicate keys -----------------------------------------------------------------------------------

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _count_keys(value: Any) -> int:
    n, stack = 0, [value]
    while stack:
        x = stack.pop()
        if type(x) is dict:
            n += len(x)
            stack.extend(x.values())
        elif type(x) is list:
            stack.extend(x)
    return n


def check_unique_keys(data: bytes | str, value: Any, what: str) -> None:
    """InvalidInput if an object in ``data`` (valid JSON that parsed to ``value``) names a key twice.

    A JSON parser keeps the last of two equal keys; agentstate refuses them. Each ``:`` outside a
    string ends one key, so the text holds as many keys as the parsed value unless one was repeated.
    """
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if b":" not in raw:
        return
    keys = _count_keys(value)
    if raw.count(b":") == keys:  # no ':' inside a string and no key lost: the common, fast case
        return
    inside_strings = b"".join(_STRING.findall(raw)).count(b":")
    if raw.count(b":") - inside_strings == keys:
        return
    raise InvalidInput(f"{what} is not valid: {_duplicate(raw)}", hint="each key may appear once in an object")


def _duplicate(raw: bytes) -> str:
    import json

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for k, v in items:
            if k in seen:
                raise KeyError(short_repr(k))
            seen[k] = v
        return seen

    try:
        json.loads(raw, object_pairs_hook=pairs)
    except KeyError as e:
        return f"the key {e.args[0]} appears twice in one object"
    except (ValueError, RecursionError):
        pass
    return "a key appears twice in one object"


GC_PAUSE_BYTES = 1 << 16


def loads(data: bytes | memoryview) -> Any:
    """orjson.loads with Python's cyclic garbage collector paused for large documents.

    A parse allocates one container per JSON object and array; every 700 of them the collector
    runs and walks all the young ones, and the full collections it triggers walk everything:
    that costs as much as the parse itself on a large state. Nothing a parse creates can be a
    cycle, so pausing the collector for its duration loses nothing (it resumes right after)."""
    if len(data) < GC_PAUSE_BYTES or not gc.isenabled():
        return orjson.loads(data)
    gc.disable()
    try:
        value = orjson.loads(data)
        if not gc.get_freeze_count():
            # Hand the new objects straight to the oldest generation (freeze then unfreeze: two list
            # splices, no traversal), so the young-generation collections that would follow do not
            # walk them either; a full collection still sees them. Skipped when the program froze
            # objects itself (gc.freeze before fork): unfreezing would undo that.
            gc.freeze()
            gc.unfreeze()
        return value
    finally:
        gc.enable()


def check_addresses(addresses: Any, encoded: bytes) -> None:
    """InvalidInput unless every key of ``addresses`` (str keys, as orjson already required) is a
    valid address; ``encoded`` is orjson's encoding of the dict they key.

    Checked in bulk: an address with a control character shows in the encoding as a backslash
    escape (U+0000-U+001F), a 0x7f byte, or 0xc2 0x80-0x9f (U+0080-U+009F); only when one of those
    bytes appears anywhere (a value may hold them too) are the addresses themselves examined, and
    one at a time only if their concatenation is not all printable."""
    if not addresses:
        return
    if "" in addresses:
        check_address("")
    if b"\\" in encoded or b"\x7f" in encoded or b"\xc2" in encoded:
        if not "".join(addresses).isprintable():
            for a in addresses:
                check_address(a)
    if max(map(len, addresses)) > MAX_ADDRESS_LEN:
        for a in addresses:
            check_address(a)


def check_address(address: Any) -> str:
    if not isinstance(address, str):
        raise InvalidInput(f"address must be a string, not {type(address).__name__}")
    if not address:
        raise InvalidInput("address must not be empty")
    if len(address) > MAX_ADDRESS_LEN:
        raise InvalidInput(f"address is {len(address)} characters long; the limit is {MAX_ADDRESS_LEN}")
    if _CONTROL.search(address):
        raise InvalidInput(f"address {address!r} contains control characters")
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"address {address!r} is not valid UTF-8") from None
    return address


def document_head(serial: int, lineage: str, updated_at: str) -> bytes:
    """The bytes between the checksum field and the resources object."""
    return b"".join(
        [
            b'"format_version":%d,"serial":%d,"lineage":' % (FORMAT_VERSION, serial),
            orjson.dumps(lineage),
            b',"updated_at":',
            orjson.dumps(updated_at),
            _RESOURCES_KEY,
        ]
    )


THREAD_HASH_BYTES = 1 << 20


class Digest:
    """The document's SHA-256 (of head, resources, ``}\n``), computed in a thread for a large state:
    hashlib releases the GIL, so the caller's checks run on another core meanwhile."""

    def __init__(self, head: bytes, resources_bytes: bytes | memoryview) -> None:
        self.head, self.body = head, resources_bytes
        self._h = sha256(head, len(head) + len(resources_bytes))
        self._thread = None
        if len(resources_bytes) >= THREAD_HASH_BYTES:
            import threading

            self._thread = threading.Thread(target=self._h.update, args=(resources_bytes,), daemon=True)
            self._thread.start()
        else:
            self._h.update(resources_bytes)

    def parts(self) -> list[bytes]:
        """The document as byte strings to write in order (waits for the hash)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._h.update(b"}\n")
        prefix = PREFIX + self._h.hexdigest().encode("ascii") + b'",' + self.head
        return [prefix, self.body, b"}\n"]  # type: ignore[list-item]

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()


def encode_document_parts(*, serial: int, lineage: str, updated_at: str, resources_bytes: bytes) -> list[bytes]:
    """The document as a list of byte strings to write in order (no copy of ``resources_bytes``)."""
    return Digest(document_head(serial, lineage, updated_at), resources_bytes).parts()


def encode_document(*, serial: int, lineage: str, updated_at: str, resources_bytes: bytes) -> bytes:
    """The document's bytes (see the module docstring for the layout)."""
    return b"".join(
        encode_document_parts(serial=serial, lineage=lineage, updated_at=updated_at, resources_bytes=resources_bytes)
    )


def _want(doc: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in doc:
        raise CorruptDocument(f"wrong shape: no {key!r} field")
    v = doc[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise CorruptDocument(f"wrong shape: {key!r} is {type(v).__name__}")
    return v


def _newer(version: Any, unverified: bool = False) -> None:
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        hint = "upgrade agentstate; the file is left untouched"
        if unverified:  # a newer format may hash differently, or this is a damaged version digit
            hint += ("; if no newer agentstate wrote it, it is damaged (its SHA-256 does not match): "
                     "move it aside and the backup will be used")
        raise FormatTooNew(
            f"state file has format version {version}; this agentstate reads up to {FORMAT_VERSION}",
            hint=hint,
            format_version=version,
        )


def _digest_ok(data: bytes) -> bool:
    digest = data[len(PREFIX) : _DIGEST_END]
    return sha256(memoryview(data)[HEADER_LEN:]).hexdigest().encode("ascii") == digest


def _exact_ints(data: bytes) -> None:
    """orjson reads integers beyond 64 bits as floats without a word: refuse them (never written by us)."""
    if not _may_hold_big_int(data):
        return
    import json

    try:
        _check_ints(json.loads(data, parse_constant=_no_constants))
    except InvalidInput as e:
        raise CorruptDocument(f"wrong shape: {e.message}") from None
    except (ValueError, RecursionError) as e:
        raise CorruptDocument(f"not valid JSON: {e}") from None


# The format version as the header states it, read before anything is judged: a newer format
# may hash (or lay out) its bytes differently, and must be refused as newer, never called corrupt
# (which would let a writer replace it with the backup). Our header: '{"checksum":"<any>",
# "format_version":N,' ; format 1 and hand-written files: '{"format_version":N' first.
_HEADER_VERSION = re.compile(
    rb'\s*\{\s*(?:"checksum"\s*:\s*"[^"\\]{0,256}"\s*,\s*)?"format_version"\s*:\s*(\d{1,18})\s*[,}]'
)


def header_version(data: bytes) -> int | None:
    """The format version the file's first field(s) claim, or None if they do not say."""
    m = _HEADER_VERSION.match(data, 0, 512)
    return int(m.group(1)) if m else None


def _judge_newer(data: bytes, claimed: int) -> None:
    """The header claims a newer format: FormatTooNew, unless the bytes show damage instead.

    A newer format is a JSON document whose header and top-level ``format_version`` agree; its
    checksum is not judged (a newer format may hash differently). Damage, not a newer format: the
    bytes are not such a JSON document, or they have our SHA-256 prefix and verify once the version
    is put back to 2 (a flipped version digit)."""
    m = _HEADER_VERSION.match(data, 0, 512)
    mismatch = data.startswith(PREFIX) and not _digest_ok(data)
    if mismatch and m and _digest_ok(data[: m.start(1)] + b"%d" % FORMAT_VERSION + data[m.end(1) :]):
        raise CorruptDocument("checksum mismatch (damaged format_version)")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CorruptDocument(f"not valid JSON: {e}") from None
    version = doc.get("format_version") if isinstance(doc, dict) else None
    if type(version) is not int or version != claimed:
        raise CorruptDocument(f"wrong shape: the header says format_version {claimed}, the document {version!r}")
    _newer(claimed, unverified=mismatch)


_V2_AT = b'"format_version":%d,' % FORMAT_VERSION
_V2_FIELDS = frozenset({"checksum", "format_version", "serial", "lineage", "updated_at", "resources"})


def decode_document(data: bytes) -> Decoded:
    """Verify and decode a state file's bytes. CorruptDocument or FormatTooNew on failure.

    A newer format is recognised from the header before the checksum is judged."""
    if not data:
        raise CorruptDocument("empty file")
    # The usual case, format 2 as written by us, is recognised without the regex.
    claimed = FORMAT_VERSION if data.startswith(_V2_AT, HEADER_LEN) else header_version(data)
    if claimed is not None and claimed > FORMAT_VERSION:
        _judge_newer(data, claimed)
    if data.startswith(PREFIX):
        if data[_DIGEST_END:HEADER_LEN] != b'",':
            raise CorruptDocument("malformed checksum field")
        digest = data[len(PREFIX) : _DIGEST_END]
        if sha256(memoryview(data)[HEADER_LEN:]).hexdigest().encode("ascii") != digest:
            raise CorruptDocument("checksum mismatch (torn or altered file)")
        try:
            doc = loads(data)
        except orjson.JSONDecodeError as e:
            raise CorruptDocument(f"not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise CorruptDocument("wrong shape: not an object")
        version = doc.get("format_version")
        _newer(version)
        _exact_ints(data)
        if type(version) is not int or version != FORMAT_VERSION:  # not 2.0, not a bool
            raise CorruptDocument(f"wrong shape: unknown format_version {version!r}")
        if doc.keys() != _V2_FIELDS:
            raise CorruptDocument(f"wrong shape: fields {sorted(doc)}")
        updated_at = _want(doc, "updated_at", str)
        resources_bytes = None
        if data.endswith(b"}\n"):
            at = data.find(_RESOURCES_KEY, HEADER_LEN)
            if at != -1:
                resources_bytes = memoryview(data)[at + len(_RESOURCES_KEY) : -2]  # no copy
    else:
        try:
            doc = loads(data)
        except orjson.JSONDecodeError as e:
            raise CorruptDocument(f"not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise CorruptDocument("wrong shape: not an object")
        version = doc.get("format_version")
        _newer(version)
        if type(version) is not int or version != 1:  # true and 1.0 are not 1
            raise CorruptDocument("no checksum header")
        _exact_ints(data)
        # Format 1 (agentstate 0.0.x): no checksum, no updated_at. Upgraded here, in memory.
        if not set(doc) <= {"format_version", "serial", "lineage", "resources", "updated_at"}:
            raise CorruptDocument(f"wrong shape: fields {sorted(doc)}")
        updated_at = doc.get("updated_at") if isinstance(doc.get("updated_at"), str) else None
        resources_bytes = None
    serial = _want(doc, "serial", int)
    if serial < 0:
        raise CorruptDocument("wrong shape: negative serial")
    lineage = _want(doc, "lineage", str)
    resources = _want(doc, "resources", dict)
    return Decoded(version, serial, lineage, updated_at, resources, resources_bytes)
