"""Strict JSON helpers shared by events, snapshots and stores.

orjson is fast but lenient: it silently turns NaN into ``null`` and encodes ``UUID``,
``Enum`` and ``datetime`` values that would come back as plain strings. Event data must
round-trip exactly, so values are checked first and anything that would not survive a
JSON round trip is rejected with :class:`~aether.errors.InvalidEventError`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import orjson

from aether.errors import InvalidEventError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1

dumps = orjson.dumps
loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError


def encode(obj: dict[str, Any]) -> bytes:
    """Encode a checked wire dict. orjson writes its UTC datetimes as RFC 3339 with "Z",
    exactly as :func:`format_timestamp` does. Raises InvalidEventError."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_UTC_Z)
    except (orjson.JSONEncodeError, RecursionError) as exc:  # lone surrogates, depth > 254
        raise InvalidEventError(f"not JSON-serialisable: {exc}") from exc


#: The deepest nesting :func:`encode` writes: orjson refuses deeper values ("Recursion limit
#: reached"), counting the enclosing event or snapshot object as one level.
MAX_ENCODE_DEPTH = 254
_DEEP_TEXT_LENGTH = 2 * (MAX_ENCODE_DEPTH + 1)


def check_depth(value: dict[str, Any], where: str) -> None:
    """Raise InvalidEventError if *value*, as a field of an event or snapshot object, nests
    deeper than :func:`encode` writes. Exactly the encoder's rule (it asks the encoder), so
    it costs an encode: call it only when :func:`may_nest_too_deeply` says so."""
    encode({where: value})


def may_nest_too_deeply(raw: bytes | bytearray | memoryview | str) -> bool:
    """Whether the JSON text *raw* could nest deeper than :func:`encode` writes.

    A cheap bound (a decoded value nests at most as deep as *raw* has opening brackets, in
    strings or not, and valid JSON closes each one), so that decoding checks the depth of
    almost no message.
    """
    if len(raw) < _DEEP_TEXT_LENGTH:
        return False  # too short to hold MAX_ENCODE_DEPTH + 1 pairs of brackets
    if isinstance(raw, str):
        return raw.count("{") + raw.count("[") > MAX_ENCODE_DEPTH
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    return raw.count(b"{") + raw.count(b"[") > MAX_ENCODE_DEPTH


def check_json_object(value: object, where: str) -> None:
    """Raise InvalidEventError unless *value* is a ``dict[str, JSON]`` that round-trips."""
    if type(value) is not dict:
        raise InvalidEventError(f"{where} must be a dict, not {type(value).__name__}")
    try:
        _check_items(value, where)
    except RecursionError as exc:
        raise InvalidEventError(f"{where} is nested too deeply (or cyclic)") from exc


def _check_items(value: dict[Any, Any], where: str) -> None:
    for key, item in value.items():
        if type(key) is not str:
            raise InvalidEventError(f"{where} has a non-string key {key!r}")
        # Inline fast path for the common flat scalars (this runs on every save).
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        if kind is int and INT64_MIN <= item <= _UINT64_MAX:
            continue
        if kind is float and item - item == 0.0:  # finite (inf - inf is nan)
            continue
        _check_value(item, f"{where}[{key!r}]")


def _check_value(value: object, where: str) -> None:
    # Exact type checks: subclasses (str enums, bool-like ints, OrderedDict) are accepted
    # only where they encode exactly like their base type.
    kind = type(value)
    if value is None or kind is str or kind is bool:
        return
    if kind is int:
        if not INT64_MIN <= value <= _UINT64_MAX:  # type: ignore[operator]
            raise InvalidEventError(f"{where} is an integer outside the 64-bit JSON range")
        return
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise InvalidEventError(f"{where} is {value!r}, which JSON cannot represent")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise InvalidEventError(f"{where} has a non-string key {key!r}")
            _check_value(item, f"{where}[{key!r}]")
        return
    # A plain tuple encodes as an array; a namedtuple would not round-trip.
    if isinstance(value, list) or (isinstance(value, tuple) and kind is tuple):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]")
        return
    raise InvalidEventError(f"{where} is a {kind.__name__}, which is not JSON-serialisable")


def utc_timestamp(ts: object, where: str) -> datetime:
    """*ts* as an aware UTC datetime. Raises InvalidEventError if naive or not a datetime."""
    if type(ts) is not datetime:
        raise InvalidEventError(f"{where} must be a datetime, not {type(ts).__name__}")
    if ts.tzinfo is UTC:
        return ts
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidEventError(f"{where} must be timezone-aware (got a naive datetime)")
    try:
        return ts.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidEventError(f"{where} {ts!r} is out of range in UTC") from exc


def format_timestamp(ts: object, where: str) -> str:
    """RFC 3339 in UTC with a ``Z`` suffix, as Go's ``time.Time`` marshals it."""
    return utc_timestamp(ts, where).isoformat().replace("+00:00", "Z")


def parse_timestamp(raw: object) -> datetime:
    """Parse an RFC 3339 timestamp (Go's nanoseconds are truncated to microseconds)."""
    if not isinstance(raw, str):
        raise ValueError(f"timestamp must be a string, not {type(raw).__name__}")
    ts = datetime.fromisoformat(raw)
    if ts.tzinfo is UTC:  # "...Z" (what aether and Go write): already UTC
        return ts
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {raw!r} has no timezone")
    try:
        return ts.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"timestamp {raw!r} is out of range in UTC") from exc


def require(obj: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """Read a typed field of a decoded JSON object, raising ValueError if it is wrong."""
    value = obj.get(key)
    if value is None and optional:
        return None
    if type(value) is not kind:
        got = "missing" if key not in obj else type(value).__name__
        raise ValueError(f"field {key!r} must be {kind.__name__}, got {got}")
    return value
