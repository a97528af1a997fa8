"""The event model: wire form (Go Aether's keys), metadata, validation, errors."""

from __future__ import annotations

import importlib
import pickle
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

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
)


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
