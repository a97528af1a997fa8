"""The store contract of DESIGN.md, as shipped in ``aether.testing.contract``, run against
both backends; and proof that the shipped suite catches broken third-party stores."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import pytest_asyncio

from aether import Event
from aether.store import InMemoryEventStore, JetStreamEventStore
from aether.testing.contract import (
    EventStoreContract,
    SnapshotStoreContract,
    _VersionChangedInFlight,
)

from ._stores import StoreFactory

pytest_plugins = ["pytester"]


class TestInMemoryEventStore(SnapshotStoreContract):
    @pytest.fixture
    def store(self) -> InMemoryEventStore:
        return InMemoryEventStore()


class TestJetStreamEventStore(SnapshotStoreContract):
    @pytest_asyncio.fixture
    async def store(self, open_store: StoreFactory) -> JetStreamEventStore:
        """A store on a fresh stream of the session's nats-server (deleted after)."""
        return await open_store()

    @pytest.mark.parametrize("later", [0, 1, 5])
    async def test_cache_holds_the_encoded_version(
        self, store: JetStreamEventStore, later: int
    ) -> None:
        """The version cache records the version the store encoded, never what the
        caller's Event says after the save started (None: not cached)."""
        await store.save_event(Event("Deposited", "a", 1))
        await store.save_event(_VersionChangedInFlight("Deposited", "a", 2, later=later))
        assert store.cached_version("a") in (None, 2)
        assert await store.get_latest_version("a") == 2


# -- the shipped suite, run by a third party --------------------------------------------------

THIRD_PARTY = textwrap.dedent(
    '''
    from collections.abc import AsyncIterator, Sequence

    import pytest
    import pytest_asyncio

    from aether import Event, VersionConflictError
    from aether.store import InMemoryEventStore
    from aether.testing.contract import EventStoreContract, SnapshotStoreContract


    class TakesTheLatestVersionForARetry(InMemoryEventStore):
        """Broken: a save with the latest version counts as already stored, whatever its id."""

        async def save_event(self, event: Event) -> None:
            try:
                await super().save_event(event)
            except VersionConflictError as conflict:
                if conflict.attempted_version != conflict.current_version:
                    raise


    class SavesOneEventAtATime(InMemoryEventStore):
        """Broken: save_events is a loop of save_event, so a batch is not all or nothing."""

        async def save_events(
            self, events: Sequence[Event], *, expected_version: int | None = None
        ) -> None:
            for event in events:
                await self.save_event(event)


    class EventsOnly:
        """Correct, without snapshots: the EventStore methods of an InMemoryEventStore,
        and its subscribe (the contract's subscription section needs it)."""

        def __init__(self) -> None:
            inner = InMemoryEventStore()
            self.save_event = inner.save_event
            self.save_events = inner.save_events
            self.get_events = inner.get_events
            self.iter_events = inner.iter_events
            self.get_events_with_errors = inner.get_events_with_errors
            self.get_latest_version = inner.get_latest_version
            self.subscribe = inner.subscribe


    class TestTakesTheLatestVersionForARetry(SnapshotStoreContract):
        @pytest.fixture
        def store(self) -> InMemoryEventStore:
            return TakesTheLatestVersionForARetry()


    class TestSavesOneEventAtATime(SnapshotStoreContract):
        @pytest.fixture
        def store(self) -> InMemoryEventStore:
            return SavesOneEventAtATime()


    class TestInMemory(SnapshotStoreContract):
        @pytest.fixture
        def store(self) -> InMemoryEventStore:
            return InMemoryEventStore()


    class TestEventsOnly(EventStoreContract):
        @pytest_asyncio.fixture  # an async fixture, as a store that opens a connection has
        async def store(self) -> AsyncIterator[EventsOnly]:
            yield EventsOnly()


    class TestForgotTheFixture(EventStoreContract):
        pass
    '''
)

#: The contract tests each broken store must fail (by test function, any parameters);
#: every other contract test must pass on it.
EXPECTED_FAILURES = {
    "TestTakesTheLatestVersionForARetry": {
        "test_versions_must_increase",
        "test_the_last_version_is_storable",
    },
    "TestSavesOneEventAtATime": {
        "test_versions_outside_the_range_are_bad_input",  # [1, 0] writes the 1
        "test_save_events_expected_version",
        "test_save_events_rejects_bad_batches",
        "test_malformed_batch_keeps_earlier_history",
        "test_batch_size_limit_is_the_same_everywhere",
        "test_bad_expected_version_is_bad_input",
        "test_a_batch_is_already_stored_only_if_every_event_of_it_is",
    },
}


def contract_tests(contract: type) -> set[str]:
    return {name for name in dir(contract) if name.startswith("test_")}


def test_the_contract_catches_broken_stores_and_passes_correct_ones(
    pytester: pytest.Pytester,
) -> None:
    """The shipped suite, run as a user would (strict asyncio mode, no conftest): each
    broken store fails exactly the contract tests that state the rule it breaks and passes
    the rest; a correct store passes all, with or without snapshots."""
    pytester.makepyfile(test_third_party=THIRD_PARTY)
    reprec = pytester.inline_run(
        "-p",
        "no:cacheprovider",
        "-o",
        "asyncio_mode=strict",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    passed, skipped, failed = reprec.listoutcomes()
    assert not skipped
    outcomes: dict[str, dict[str, set[str]]] = {}
    cases: Counter[str] = Counter()
    for outcome, reports in (("passed", passed), ("failed", failed)):
        for report in reports:
            _, cls, test = report.nodeid.split("::")
            test = test.split("[")[0]
            if outcome == "failed":
                assert report.when == ("setup" if cls == "TestForgotTheFixture" else "call"), (
                    report.nodeid,
                    report.longreprtext,
                )
            outcomes.setdefault(cls, {"passed": set(), "failed": set()})[outcome].add(test)
            cases[cls] += 1

    snapshot_tests, event_tests = (
        contract_tests(SnapshotStoreContract),
        contract_tests(EventStoreContract),
    )
    assert event_tests < snapshot_tests
    # Every case of the suite ran on every store (each has one report).
    assert cases["TestInMemory"] > len(snapshot_tests)
    for cls in EXPECTED_FAILURES:
        assert cases[cls] == cases["TestInMemory"], cls
    assert cases["TestEventsOnly"] == cases["TestForgotTheFixture"] > len(event_tests)
    for cls, expected in EXPECTED_FAILURES.items():
        assert outcomes[cls]["failed"] == expected, cls
        # A parametrised test counts as failed if any of its cases fails.
        assert outcomes[cls]["passed"] | expected == snapshot_tests, cls
    assert outcomes["TestInMemory"] == {"passed": snapshot_tests, "failed": set()}
    assert outcomes["TestEventsOnly"] == {"passed": event_tests, "failed": set()}
    # Without the fixture, every test errors at setup, saying what to override.
    assert outcomes["TestForgotTheFixture"] == {"passed": set(), "failed": event_tests}
    forgot = [r for r in failed if "::TestForgotTheFixture::" in r.nodeid]
    assert all("must override the `store` fixture" in r.longreprtext for r in forgot)


def test_aether_testing_does_not_import_pytest_or_the_contract() -> None:
    """``aether.testing`` is usable without pytest; only an explicit import loads the suite."""
    code = (
        "import sys, aether.testing\n"
        "assert 'pytest' not in sys.modules, 'pytest'\n"
        "assert 'aether.testing.contract' not in sys.modules, 'contract'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
