"""aether.ext.eventsourcing passes the eventsourcing library's own test cases, unmodified.

Each case is subclassed with only what the library asks a persistence module to provide
(create_recorder, the expected classes, the environment); no test method is overridden
and none is skipped. They run against the session's real nats-server, each recorder on
a stream of its own.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

pytest.importorskip("eventsourcing")  # the "eventsourcing" extra (part of "dev")

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    IntegrityError,
    ProcessRecorder,
    Tracking,
    TrackingRecorder,
)

# The library's cases through their modules: a TestCase class imported by name would be
# collected (and run without a recorder) too.
from eventsourcing.tests import application as es_application
from eventsourcing.tests import persistence as es_persistence
from eventsourcing.tests import projection as es_projection
from eventsourcing.utils import Environment

from aether.ext.eventsourcing import (
    Factory,
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)

MODULE = "aether.ext.eventsourcing"


@pytest.fixture(autouse=True)
def _nats(request: pytest.FixtureRequest, nats_url: str) -> Iterator[None]:
    """Give each unittest case the session server's URL and close its factories after."""
    if request.instance is not None:
        request.instance.nats_url = nats_url
        request.instance.factories = []
    yield
    if request.instance is not None:
        for factory in request.instance.factories:
            factory.close()


class _Recorders:
    nats_url: str
    factories: list[Factory]

    def factory(self) -> Factory:
        factory = Factory(
            Environment(
                "test",
                {"NATS_URL": self.nats_url, "NATS_STREAM": f"es-{uuid.uuid4().hex[:12]}"},
            )
        )
        self.factories.append(factory)
        return factory


class TestAggregateRecorder(_Recorders, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory().aggregate_recorder()


class TestSnapshotRecorder(_Recorders, es_persistence.AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory().aggregate_recorder("snapshots")


class TestApplicationRecorder(
    _Recorders, es_persistence.ApplicationRecorderTestCase[ApplicationRecorder]
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        # The library's optional subscribe case (blocking at the tail, stop, topics), run
        # as its own persistence modules run it.
        self.optional_test_insert_subscribe()


class TestTrackingRecorder(_Recorders, es_persistence.TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory().tracking_recorder()


class TestProcessRecorder(_Recorders, es_persistence.ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory().process_recorder()


class _AppEnvironment:
    """PERSISTENCE_MODULE, NATS_URL and a fresh stream prefix in os.environ for a test."""

    nats_url: str
    factories: list[Factory]
    _saved: dict[str, str | None]

    def _set_environ(self) -> dict[str, str]:
        values = {
            "PERSISTENCE_MODULE": MODULE,
            "NATS_URL": self.nats_url,
            "NATS_STREAM_PREFIX": f"es-{uuid.uuid4().hex[:8]}-",
        }
        self._saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)
        return values

    def _restore_environ(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class MyTrackingRecorder(JetStreamTrackingRecorder):
    pass


class TestFactory(_AppEnvironment, es_persistence.InfrastructureFactoryTestCase[Factory]):
    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyTrackingRecorder

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return JetStreamProcessRecorder

    def setUp(self) -> None:
        self.env = Environment("TestCase", self._set_environ())
        super().setUp()

    def tearDown(self) -> None:
        super().tearDown()
        self._restore_environ()


class TestExampleApplication(_AppEnvironment, es_application.ExampleApplicationTestCase):
    expected_factory_topic = f"{MODULE}:Factory"

    def setUp(self) -> None:
        super().setUp()
        self._set_environ()

    def tearDown(self) -> None:
        self._restore_environ()
        super().tearDown()


class JetStreamEventCounters(JetStreamTrackingRecorder, es_projection.EventCountersView):
    """A materialised view on JetStream for the library's projection cases. Its state
    (the counters) and its tracking live in one record, on one subject of the tracking
    stream, replaced with a compare-and-set: counting an event and recording that it was
    counted are one atomic write, and a tracking id not after the recorded one raises
    IntegrityError with nothing changed."""

    def _subject(self) -> str:
        return f"{self._tracking_stream}.view"

    async def _read(self) -> tuple[dict[str, Any], int]:
        msg = await self._api.last_msg(self._tracking_stream, self._subject())
        if msg is None:
            return {"tracking": {}, "created": 0, "subsequent": 0}, 0
        return json.loads(msg.data), msg.seq

    async def _update(self, tracking: Tracking, counter: str | None) -> None:
        while True:
            state, seq = await self._read()
            current = state["tracking"].get(tracking.application_name)
            if current is not None and tracking.notification_id <= current:
                raise IntegrityError(f"{tracking} is not after {current}")
            state["tracking"][tracking.application_name] = tracking.notification_id
            if counter is not None:
                state[counter] += 1
            answer, _ = await self._api.request(
                self._subject(),
                json.dumps(state).encode(),
                {"Nats-Expected-Last-Subject-Sequence": str(seq)},
                stream=self._tracking_stream,
            )
            if answer.get("error") is None:
                return  # else someone else wrote meanwhile: read again and decide

    async def _max_tracking(self, application_name: str) -> tuple[int | None, int, int]:
        state, seq = await self._read()
        return state["tracking"].get(application_name), 0, seq

    async def _insert_tracking(self, tracking: Tracking) -> None:
        await self._update(tracking, None)

    def get_created_event_counter(self) -> int:
        return int(self._run(self._read())[0]["created"])

    def get_subsequent_event_counter(self) -> int:
        return int(self._run(self._read())[0]["subsequent"])

    def incr_created_event_counter(self, tracking: Tracking) -> None:
        self._run(self._update(tracking, "created"))

    def incr_subsequent_event_counter(self, tracking: Tracking) -> None:
        self._run(self._update(tracking, "subsequent"))


class TestEventCountersView(_Recorders, es_projection.EventCountersViewTestCase):
    def construct_event_counters_view(self) -> es_projection.EventCountersView:
        view = self.factory().tracking_recorder(JetStreamEventCounters)
        assert isinstance(view, JetStreamEventCounters)
        return view


class TestAggregateEventCountersProjection(
    _AppEnvironment, es_projection.AggregateEventCountersProjectionTestCase
):
    view_class = JetStreamEventCounters
    env: ClassVar[dict[str, str]] = {}

    def setUp(self) -> None:
        super().setUp()
        self.env = self._set_environ()  # type: ignore[misc]

    def tearDown(self) -> None:
        self._restore_environ()
        super().tearDown()


class TestEventSourcedProjection(_AppEnvironment, es_projection.EventSourcedProjectionTestCase):
    env: ClassVar[dict[str, str]] = {}

    def setUp(self) -> None:
        super().setUp()
        self.env = self._set_environ()  # type: ignore[misc]

    def tearDown(self) -> None:
        self._restore_environ()
        super().tearDown()


def test_close_joins_the_loop_thread(nats_url: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    factory = Factory(Environment("closing", {"NATS_URL": nats_url, "NATS_STREAM": "es-closing"}))
    recorder = factory.application_recorder()
    assert recorder.max_notification_id() is None
    factory.close()
    assert {t.ident for t in threading.enumerate()} <= before


def test_called_from_inside_another_event_loop(nats_url: str) -> None:
    import asyncio

    from eventsourcing.persistence import StoredEvent

    factory = Factory(Environment("inloop", {"NATS_URL": nats_url, "NATS_STREAM": "es-inloop"}))
    try:
        recorder = factory.application_recorder()

        async def inside() -> Any:
            return recorder.insert_events([StoredEvent(uuid.uuid4(), 1, "t", b"s")])

        assert asyncio.run(inside()) == [1]
    finally:
        factory.close()


class TestNonInterleavingNotificationIDs(
    _Recorders, es_persistence.NonInterleavingNotificationIDsBaseCase
):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()
