"""The event model: wire form (Go Aether's keys), metadata, validation, errors."""

from __future__ import annotations

import contextlib
import importlib
import json
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aether import (
    CAUSATION_ID,
    CORRELATION_ID,
    SPAN_ID,
    TRACE_ID,
    USER_ID,
    ActorSnapshot,
    AetherError,
    Event,
    InvalidEventError,
    ReplayError,
    ReplayResult,
    VersionConflictError,
    _json,
)
from aether.store import _rules


def test_defaults() -> None:
    before = datetime.now(UTC)
    a = Event("Opened", "acc", 1)
    after = datetime.now(UTC)
    b = Event("Opened", "acc", 1)
    assert a.data == {} and a.metadata == {} and a.command_id is None
    assert a.id != b.id and len(a.id) == 36
    assert a.timestamp.tzinfo is not None and a.timestamp.utcoffset() == timedelta(0)
    assert before <= a.timestamp <= after
    a.data["x"] = 1
    assert b.data == {}  # no shared mutable default


def test_wire_form_uses_go_aether_keys() -> None:
    event = Event(
        event_type="Deposited",
        actor_id="acc-1",
        version=3,
        data={"amount": 5},
        id="e-1",
        command_id="c-1",
        metadata={CORRELATION_ID: "corr"},
        timestamp=datetime(2026, 11, 26, 4, 52, 13, 676736, tzinfo=UTC),
    )
    assert (
        event.to_dict()
        == orjson.loads(event.to_json())
        == {
            "id": "e-1",
            "eventType": "Deposited",
            "actorId": "acc-1",
            "commandId": "c-1",
            "version": 3,
            "data": {"amount": 5},
            "metadata": {"correlationId": "corr"},
            "timestamp": "2026-11-26T04:52:13.676736Z",
        }
    )
    assert Event.from_json(event.to_json()) == event


def test_optional_keys_are_omitted_when_empty() -> None:
    wire = orjson.loads(Event("Opened", "acc", 1).to_json())
    assert "commandId" not in wire and "metadata" not in wire


def test_timestamps_are_normalised_to_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    event = Event("Opened", "acc", 1, timestamp=datetime(2026, 1, 1, 12, tzinfo=plus_two))
    assert orjson.loads(event.to_json())["timestamp"] == "2026-01-01T10:00:00Z"
    assert Event.from_json(event.to_json()).timestamp == event.timestamp


@settings(max_examples=300, deadline=None)
@given(st.datetimes(), st.sampled_from(["Z", "+00:00", "-00:00", "+05:30", "-11:59"]))
def test_decoded_timestamps_are_the_instant_written_in_utc(ts: datetime, suffix: str) -> None:
    # Decoding returns an already-UTC timestamp as parsed (the replay's hot path) and
    # converts any other offset: either way the instant written, tzinfo UTC.
    text = ts.isoformat() + suffix
    offset = datetime.fromisoformat(text).utcoffset()
    assert offset is not None
    try:
        expected = (ts - offset).replace(tzinfo=UTC)
    except OverflowError:
        with pytest.raises(ValueError, match="out of range"):
            _json.parse_timestamp(text)
        return
    decoded = _json.parse_timestamp(text)
    assert decoded == expected and decoded.tzinfo is UTC


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"eventType":"A","actorId":"a","version":1,"timestamp":"2026-01-01T00:00:00Z"}',
        b'{"id":"x","eventType":"A","actorId":"a","version":"1","timestamp":"2026-01-01T00:00:00Z"}',
        b'{"id":"x","eventType":"A","actorId":"a","version":1,"timestamp":"yesterday"}',
        b'{"id":"x","eventType":"A","actorId":"a","version":1,"timestamp":"2026-01-01T00:00:00"}',
        b'{"id":"x","eventType":"A","actorId":"a","version":1,"data":[],'
        b'"timestamp":"2026-01-01T00:00:00Z"}',
        b'{"id":"x","eventType":"A","actorId":"a","version":1,"metadata":{"k":1},'
        b'"timestamp":"2026-01-01T00:00:00Z"}',
    ],
)
def test_malformed_payloads_raise_a_value_error(raw: bytes) -> None:
    with pytest.raises(InvalidEventError):
        Event.from_json(raw)
    with pytest.raises(ValueError):
        Event.from_json(raw)


def test_metadata_properties() -> None:
    event = Event("Opened", "acc", 1)
    for name, key in [
        ("correlation_id", CORRELATION_ID),
        ("causation_id", CAUSATION_ID),
        ("user_id", USER_ID),
        ("trace_id", TRACE_ID),
        ("span_id", SPAN_ID),
    ]:
        assert getattr(event, name) is None
        setattr(event, name, f"v-{name}")
        assert event.metadata[key] == f"v-{name}"
        assert getattr(event, name) == f"v-{name}"
        setattr(event, name, None)
        assert key not in event.metadata
    assert (CORRELATION_ID, CAUSATION_ID, USER_ID, TRACE_ID, SPAN_ID) == (
        "correlationId",
        "causationId",
        "userId",
        "traceId",
        "spanId",
    )


def test_with_metadata_from_keeps_own_values() -> None:
    cause = Event("Ordered", "order", 1, metadata={CORRELATION_ID: "c", USER_ID: "ada"})
    effect = Event("Reserved", "stock", 4, metadata={USER_ID: "system"})
    assert effect.with_metadata_from(cause) is effect
    assert effect.correlation_id == "c"
    assert effect.user_id == "system"
    assert cause.metadata == {CORRELATION_ID: "c", USER_ID: "ada"}


def test_snapshot_roundtrip_and_validation() -> None:
    snap = ActorSnapshot("acc", 7, {"balance": 70})
    assert ActorSnapshot.from_json(snap.to_json()) == snap
    with pytest.raises(InvalidEventError):
        ActorSnapshot("acc", "7", {}).to_json()  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        ActorSnapshot.from_json(b'{"actorId":"a"}')


def test_version_conflict_error() -> None:
    err = VersionConflictError("acc", 3, 5)
    assert isinstance(err, AetherError)
    assert (err.actor_id, err.attempted_version, err.current_version) == ("acc", 3, 5)
    assert str(err) == "version conflict: actor 'acc' has version 5, cannot save version 3"
    copy = pickle.loads(pickle.dumps(err))  # crosses process boundaries intact
    assert (copy.actor_id, copy.attempted_version, copy.current_version) == ("acc", 3, 5)


def test_invalid_event_error_is_a_value_and_type_error() -> None:
    assert issubclass(InvalidEventError, AetherError)
    assert issubclass(InvalidEventError, ValueError)
    assert issubclass(InvalidEventError, TypeError)


def test_replay_result() -> None:
    assert not ReplayResult().has_errors
    error = ReplayError(9, b"x", ValueError("bad"))
    result = ReplayResult(events=[], errors=[error])
    assert result.has_errors
    assert "9" in str(error) and "bad" in str(error)


@pytest.mark.parametrize(
    ("module", "names"),
    [
        (
            "aether",
            "Event ActorSnapshot AetherError VersionConflictError ReplayError ReplayResult "
            "CORRELATION_ID CAUSATION_ID USER_ID TRACE_ID SPAN_ID",
        ),
        (
            "aether.store",
            "EventStore SnapshotStore InMemoryEventStore JetStreamEventStore JetStreamConfig",
        ),
        ("aether.testing", "NatsServer NatsCluster"),
    ],
)
def test_design_public_names(module: str, names: str) -> None:
    """The names DESIGN.md fixes, importable from the packages it names."""
    imported = importlib.import_module(module)
    for name in names.split():
        assert name in imported.__all__ and hasattr(imported, name), name


# -- one set of rules for encoding and decoding (issue faults 9 and 11) ----------------------

MAX_VERSION = 2**63 - 1
TS = "2026-01-01T00:00:00Z"


def wire_with(version: bytes) -> bytes:
    """An otherwise valid wire event whose version is the JSON token *version*."""
    return (
        b'{"id":"e-1","eventType":"A","actorId":"a","version":' + version
        + b',"timestamp":"' + TS.encode() + b'"}'
    )  # fmt: skip


@pytest.mark.parametrize(
    "token",
    [b"9223372036854775808", b"18446744073709551615", b"-7", b"-1", b"0", b"true", b"false",
     b"1.5", b"1.0", b'"3"', b"null", b"[1]", b"-9223372036854775808"],
)  # fmt: skip
def test_decode_refuses_versions_encode_refuses(token: bytes) -> None:
    """Fault 9: a foreign message with version 2**63 (or 0, -7, true, ...) used to decode,
    and then became the actor's latest version for good. Decoding refuses it now, as
    encoding does, for events and snapshots alike."""
    with pytest.raises(InvalidEventError, match="version"):
        Event.from_json(wire_with(token))
    with pytest.raises(InvalidEventError, match="version"):
        Event.from_dict(orjson.loads(wire_with(token)))
    snapshot = b'{"actorId":"a","version":' + token + b',"state":{},"timestamp":"' + TS.encode()
    with pytest.raises(InvalidEventError, match="version"):
        ActorSnapshot.from_json(snapshot + b'"}')


@pytest.mark.parametrize("version", [1, 2, MAX_VERSION])
def test_decode_accepts_the_whole_version_range(version: int) -> None:
    event = Event.from_json(wire_with(str(version).encode()))
    assert event.version == version and type(event.version) is int
    assert Event.from_json(event.to_json()) == event
    snapshot = ActorSnapshot("a", version, {"n": 1})
    assert ActorSnapshot.from_json(snapshot.to_json()) == snapshot


@pytest.mark.parametrize("version", [0, -1, MAX_VERSION + 1, 2**64, True, 1.0, "1", None])
def test_encode_refuses_versions_outside_the_range(version: object) -> None:
    with pytest.raises(InvalidEventError, match="version"):
        Event("A", "a", version).to_json()  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="version"):
        Event("A", "a", version).to_dict()  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="version"):
        ActorSnapshot("a", version, {}).to_json()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("eventType", "", "event_type"),
        ("eventType", 5, "event_type"),
        ("actorId", "", "actor_id"),
        ("id", "", "id"),
        ("id", "has space", "id"),
        ("id", "tab\there", "id"),
        ("id", "zero\u200bwidth", "id"),
        ("id", "x" * 257, "id"),
        ("commandId", 7, "command_id"),
        ("metadata", {"k": None}, "metadata"),
        ("metadata", [], "metadata"),
        ("data", [], "data"),
        ("data", "x", "data"),
        ("timestamp", "2026-01-01T00:00:00", "timezone"),
        ("timestamp", "0001-01-01T00:00:00+01:00", "range"),
    ],
)
def test_decode_applies_the_encoders_field_rules(key: str, value: object, message: str) -> None:
    """Before, an empty event type or an id that is no Nats-Msg-Id decoded fine."""
    wire = orjson.loads(wire_with(b"1"))
    wire[key] = value
    with pytest.raises(InvalidEventError, match=message):
        Event.from_json(orjson.dumps(wire))
    with pytest.raises(InvalidEventError, match=message):
        Event.from_dict(wire)


def test_decode_keeps_go_aethers_nulls_and_absent_keys() -> None:
    wire = orjson.loads(wire_with(b"3"))
    wire.update(data=None, metadata=None, commandId=None)
    event = Event.from_json(orjson.dumps(wire))
    assert (event.data, event.metadata, event.command_id) == ({}, {}, None)
    assert event == Event.from_dict(wire)


def nested(depth: int) -> dict[str, Any]:
    """A dict *depth* levels deep (``{}`` is one)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def test_data_nesting_limit_is_the_same_both_ways() -> None:
    """orjson decodes up to 1024 levels but encodes 254 (the event object included): an
    event whose data nests deeper than the encoder writes does not decode either."""
    fits = Event("A", "a", 1, nested(253), id="e-1")
    raw = fits.to_json()
    assert Event.from_json(raw) == fits
    assert ActorSnapshot.from_json(ActorSnapshot("a", 1, nested(253)).to_json()).version == 1
    deeper = raw.replace(b'"data":', b'"data":{"n":', 1).replace(b',"timestamp"', b'},"timestamp"')
    assert orjson.loads(deeper)["data"] == nested(254)
    with pytest.raises(InvalidEventError):
        Event("A", "a", 1, nested(254)).to_json()
    with pytest.raises(InvalidEventError):
        Event("A", "a", 1, nested(254)).to_dict()
    with pytest.raises(InvalidEventError, match="malformed event"):
        Event.from_json(deeper)
    with pytest.raises(InvalidEventError, match="malformed event"):
        Event.from_json(deeper.decode())
    with pytest.raises(InvalidEventError, match="malformed event"):
        Event.from_dict(orjson.loads(deeper))
    with pytest.raises(InvalidEventError, match="malformed snapshot"):
        ActorSnapshot.from_json(
            b'{"actorId":"a","version":1,"state":' + orjson.dumps(nested(254))
            + b',"timestamp":"' + TS.encode() + b'"}'
        )  # fmt: skip
    # Many brackets but shallow (the cheap pre-check says "maybe"; the real check, no).
    wide = Event("A", "a", 1, {"items": [{"k": [i]} for i in range(300)]}, id="e-2")
    assert Event.from_json(wide.to_json()) == wide


def test_from_dict_checks_data_in_full() -> None:
    """from_dict's input may come from any JSON parser (or none): its data is checked as
    to_json checks it. The stdlib parser, for one, reads NaN and huge integers."""
    wire = json.loads(wire_with(b"1"))
    for bad in (json.loads("NaN"), 2**64, {1, 2}, datetime.now(UTC), object()):
        wire["data"] = {"x": bad}
        with pytest.raises(InvalidEventError, match="malformed event"):
            Event.from_dict(wire)
        with pytest.raises(InvalidEventError):
            Event("A", "a", 1, {"x": bad}).to_json()


# -- properties: decode(encode(e)) == e, and decode refuses exactly what encode refuses ------

id_chars = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
fixed_offsets = st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))


def fits_utc(ts: datetime) -> bool:
    try:
        ts.astimezone(UTC)
    except OverflowError:
        return False
    return True


aware = st.datetimes(timezones=st.one_of(st.just(UTC), fixed_offsets)).filter(fits_utc)
# Actor ids around the store's limit (MAX_TOKEN_LENGTH = 2048 characters once encoded).
long_actor_ids = st.builds(
    lambda unit, n: unit * n,
    st.sampled_from(["a", ".", "é", "日", "\U0001f600"]),
    st.sampled_from([170, 171, 341, 342, 512, 513, 682, 683, 2048, 2049]),
)
valid_events = st.builds(
    Event,
    event_type=st.text(min_size=1, max_size=10),
    actor_id=st.one_of(st.text(min_size=1, max_size=10), long_actor_ids),
    version=st.one_of(st.integers(1, MAX_VERSION), st.sampled_from([1, MAX_VERSION])),
    data=json_objects,
    id=st.text(id_chars, min_size=1, max_size=20),
    command_id=st.one_of(st.none(), st.text(max_size=6)),
    metadata=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    timestamp=aware,
)
PROPERTY_SETTINGS = settings(max_examples=400, deadline=None)


@PROPERTY_SETTINGS
@given(event=valid_events)
def test_decode_inverts_encode(event: Event) -> None:
    raw = event.to_json()
    decoded = Event.from_json(raw)
    assert decoded == Event.from_dict(orjson.loads(raw)) == Event.from_json(raw.decode())
    assert decoded.timestamp == event.timestamp and decoded.timestamp.tzinfo is UTC
    assert (decoded.actor_id, decoded.version, decoded.id) == (
        event.actor_id,
        event.version,
        event.id,
    )
    assert decoded.to_json() == raw  # encode(decode(encode(e))) == encode(e)


MISSING = object()
# Each wire key: (values an encoder writes, values that may be wrong). All JSON-serialisable.
WIRE_VALUES: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "id": (
        st.text(id_chars, min_size=1, max_size=12),
        st.one_of(
            st.text(max_size=6),  # may be empty, or hold spaces and control characters
            st.sampled_from(["", " ", "a b", "x" * 256, "x" * 257, "\u2028", 5, None, ["x"]]),
        ),
    ),
    "eventType": (
        st.text(min_size=1, max_size=6),
        st.one_of(st.just(""), st.sampled_from([5, None, True, {}])),
    ),
    "actorId": (
        st.one_of(st.text(min_size=1, max_size=6), long_actor_ids),
        st.sampled_from(["", 0, None, ["a"]]),
    ),
    "version": (
        st.one_of(st.integers(1, MAX_VERSION), st.sampled_from([1, MAX_VERSION])),
        st.one_of(
            st.integers(-(2**63), 2**64 - 1),
            st.sampled_from([0, -1, MAX_VERSION + 1, 2**64 - 1, -(2**63)]),
            st.sampled_from([True, False, 1.0, 1.5, "3", None, [1]]),
        ),
    ),
    "data": (
        st.one_of(json_objects, st.none(), st.sampled_from([252, 253]).map(nested)),
        st.one_of(st.sampled_from([[], "x", 5, True]), st.sampled_from([254, 255]).map(nested)),
    ),
    "metadata": (
        st.one_of(st.none(), st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2)),
        st.one_of(
            st.dictionaries(st.text(max_size=4), json_scalars, min_size=1, max_size=2),
            st.sampled_from([[], "x", 0]),
        ),
    ),
    "commandId": (
        st.one_of(st.none(), st.text(max_size=6)),
        st.sampled_from([5, [], {}, True]),
    ),
    "timestamp": (
        st.one_of(aware.map(datetime.isoformat), st.just("2026-11-26T04:52:13.676736881Z")),
        st.one_of(
            st.datetimes().map(datetime.isoformat),  # naive
            st.sampled_from(
                [
                    "garbage",
                    "",
                    "2026-01-01",
                    "2026-01-01T00:00:00+25:00",
                    "0001-01-01T00:00:00+01:00",
                    "9999-12-31T23:59:59-01:00",
                    5,
                    None,
                ]
            ),
        ),
    ),
}
SNAPSHOT_VALUES = {
    "actorId": WIRE_VALUES["actorId"],
    "version": WIRE_VALUES["version"],
    "state": (json_objects, WIRE_VALUES["data"][1]),
    "timestamp": WIRE_VALUES["timestamp"],
}


@st.composite
def wire_dicts(
    draw: st.DrawFn, values: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]]
) -> dict[str, Any]:
    """A wire dict with up to two keys given possibly wrong values or left out."""
    suspects = draw(st.sets(st.sampled_from(sorted(values)), max_size=2))
    wire: dict[str, Any] = {}
    for key, (good, suspect) in values.items():
        value = draw(st.one_of(suspect, st.just(MISSING)) if key in suspects else good)
        if value is not MISSING:
            wire[key] = value
    return wire


def wire_text(wire: dict[str, Any]) -> bytes:
    """JSON text of *wire* (the stdlib writer: orjson refuses to write the deepest data)."""
    return json.dumps(wire, allow_nan=False).encode()


def timestamp_of(value: object) -> object:
    """What the wire timestamp stands for, checked by nothing: an ISO string becomes a
    datetime (naive or aware, in UTC's range or not), anything else stays as it is."""
    if type(value) is str:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return value


def event_for(wire: dict[str, Any]) -> Event:
    """The Event a wire dict describes, built without any check (the oracle's input)."""
    data, metadata = wire.get("data"), wire.get("metadata")
    return Event(
        event_type=wire.get("eventType"),  # type: ignore[arg-type]
        actor_id=wire.get("actorId"),  # type: ignore[arg-type]
        version=wire.get("version"),  # type: ignore[arg-type]
        data={} if data is None else data,
        id=wire.get("id"),  # type: ignore[arg-type]
        command_id=wire.get("commandId"),
        metadata={} if metadata is None else metadata,
        timestamp=timestamp_of(wire.get("timestamp")),  # type: ignore[arg-type]
    )


def outcome(call: Callable[[], object]) -> object:
    """What *call* returns, or the InvalidEventError class if it raises one."""
    try:
        return call()
    except InvalidEventError:
        return InvalidEventError


@PROPERTY_SETTINGS
@given(wire=wire_dicts(WIRE_VALUES))
def test_decode_refuses_exactly_what_encode_refuses(wire: dict[str, Any]) -> None:
    """Differential: for any wire dict, decoding it succeeds iff encoding the event it
    describes succeeds (and then gives that event): in the event model (``to_json`` /
    ``from_json`` / ``from_dict``), and with the stores' own limits (``_rules``)."""
    raw = wire_text(wire)
    event = event_for(wire)
    encoded = outcome(event.to_json)
    decoded = outcome(lambda: Event.from_json(raw))
    assert (encoded is InvalidEventError) == (decoded is InvalidEventError), (encoded, decoded)
    assert outcome(lambda: Event.from_dict(json.loads(raw))) == decoded
    if decoded is not InvalidEventError:
        assert isinstance(decoded, Event) and Event.from_json(event.to_json()) == decoded
    store_encoded = outcome(lambda: _rules.encode_event(event))
    store_decoded = outcome(lambda: _rules.decode_event(raw))
    assert (store_encoded is InvalidEventError) == (store_decoded is InvalidEventError)
    assert store_decoded in (decoded, InvalidEventError)


@PROPERTY_SETTINGS
@given(wire=wire_dicts(SNAPSHOT_VALUES))
def test_snapshot_decode_refuses_exactly_what_encode_refuses(wire: dict[str, Any]) -> None:
    raw = wire_text(wire)
    snapshot = ActorSnapshot(
        actor_id=wire.get("actorId"),  # type: ignore[arg-type]
        version=wire.get("version"),  # type: ignore[arg-type]
        state=wire.get("state"),  # type: ignore[arg-type]
        timestamp=timestamp_of(wire.get("timestamp")),  # type: ignore[arg-type]
    )
    encoded = outcome(snapshot.to_json)
    decoded = outcome(lambda: ActorSnapshot.from_json(raw))
    assert (encoded is InvalidEventError) == (decoded is InvalidEventError), (encoded, decoded)
    if decoded is not InvalidEventError:
        assert isinstance(decoded, ActorSnapshot)
        assert ActorSnapshot.from_json(snapshot.to_json()) == decoded
    store_encoded = outcome(lambda: _rules.encode_snapshot(snapshot))
    store_decoded = outcome(lambda: _rules.decode_snapshot(raw))
    assert (store_encoded is InvalidEventError) == (store_decoded is InvalidEventError)


def test_store_rules_refuse_long_actor_ids_both_ways() -> None:
    """The store limit (the actor id's subject token, at most 2048 characters) holds for
    encoding, decoding and reads alike; the event model itself has no length limit."""
    for actor, fits in [("a" * 2048, True), ("a" * 2049, False), ("é" * 341, True),
                        ("é" * 342, False), ("." * 682, True), ("." * 683, False)]:  # fmt: skip
        event = Event("A", actor, 1, id="e-1", timestamp=datetime(2026, 1, 1, tzinfo=UTC))
        raw = event.to_json()  # the model accepts any non-empty id
        assert Event.from_json(raw) == event
        if fits:
            assert _rules.encode_event(event) == raw
            assert _rules.decode_event(raw) == event
            _rules.check_read(actor)
        else:
            with pytest.raises(InvalidEventError, match="too long"):
                _rules.encode_event(event)
            with pytest.raises(InvalidEventError, match="too long"):
                _rules.decode_event(raw)
            with pytest.raises(InvalidEventError, match="too long"):
                _rules.check_read(actor)
            with pytest.raises(InvalidEventError, match="too long"):
                _rules.encode_snapshot(ActorSnapshot(actor, 1, {}))


def test_position_is_not_part_of_the_wire_form_or_of_equality() -> None:
    event = Event("Opened", "acc", 1)
    assert event.position is None
    read = Event.from_json(event.to_json())
    read.position = 42
    assert read == event
    assert b"position" not in read.to_json()
    assert "position" not in read.to_dict()
    with pytest.raises(TypeError):
        Event("Opened", "acc", 1, {}, "id", None, {}, read.timestamp, 7)  # type: ignore[misc]
    assert Event("Opened", "acc", 1, position=7).position == 7
