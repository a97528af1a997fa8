"""A small bank-account service on aether: HTTP commands become events.

Each account is an actor. A command loads the account (latest snapshot + the events after
it), decides which event follows, and appends it with version ``account.version + 1``.
If another request, process or host appended first, the store raises
``VersionConflictError``: without ``expected_version`` the command is reloaded, decided
again and retried; with it (the client says which version it saw) the answer is HTTP 409.

Run it from a checkout (the ``examples`` extra brings fastapi and uvicorn; any
nats-server with JetStream will do)::

    .venv/bin/pip install -e ".[server,examples]"
    .venv/bin/aether server &
    NATS_URL=nats://127.0.0.1:4222 .venv/bin/uvicorn --app-dir examples fastapi_app:app
"""

# --8<-- [start:setup]
from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, cast

import nats
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from aether import ActorSnapshot, Event, StoreUnavailableError, VersionConflictError
from aether.store import JetStreamConfig, JetStreamEventStore, SnapshotStore

#: Save a snapshot once this many events have been appended since the last one.
SNAPSHOT_EVERY = 20
#: How often a command without ``expected_version`` is retried after a conflict.
MAX_ATTEMPTS = 10
# --8<-- [end:setup]


# --8<-- [start:aggregate]
class DomainError(Exception):
    """The command is not allowed in the account's current state (HTTP 422)."""


class AccountNotFoundError(Exception):
    """No such account (HTTP 404)."""


@dataclass
class Account:
    """The aggregate: state rebuilt from events, and the version it reflects."""

    id: str
    version: int = 0  # version of the last event applied; 0 = no events yet
    owner: str | None = None
    balance: int = 0
    snapshot_version: int = 0  # version of the snapshot it was loaded from

    def apply(self, event: Event) -> None:
        if event.event_type == "AccountOpened":
            self.owner = event.data["owner"]
        elif event.event_type == "Deposited":
            self.balance += event.data["amount"]
        elif event.event_type == "Withdrawn":
            self.balance -= event.data["amount"]
        self.version = event.version

    def next_event(self, event_type: str, data: dict[str, Any]) -> Event:
        """The event that follows this state: version + 1."""
        return Event(event_type, self.id, self.version + 1, data)

    def snapshot(self) -> ActorSnapshot:
        state = {"owner": self.owner, "balance": self.balance}
        return ActorSnapshot(self.id, self.version, state)

    @classmethod
    def from_snapshot(cls, snapshot: ActorSnapshot) -> Account:
        return cls(
            id=snapshot.actor_id,
            version=snapshot.version,
            owner=snapshot.state["owner"],
            balance=snapshot.state["balance"],
            snapshot_version=snapshot.version,
        )


async def load_account(store: SnapshotStore, account_id: str) -> Account:
    """Rebuild an account: its latest snapshot, then the events after it."""
    snapshot = await store.get_latest_snapshot(account_id)
    account = Account(account_id) if snapshot is None else Account.from_snapshot(snapshot)
    async for event in store.iter_events(account_id, from_version=account.version + 1):
        account.apply(event)
    return account


# --8<-- [end:aggregate]


# --8<-- [start:commands]
def open_account(owner: str) -> Callable[[Account], Event]:
    def decide(account: Account) -> Event:
        if account.version > 0:
            raise DomainError(f"account {account.id!r} already exists")
        return account.next_event("AccountOpened", {"owner": owner})

    return decide


def deposit(amount: int) -> Callable[[Account], Event]:
    def decide(account: Account) -> Event:
        if account.version == 0:
            raise AccountNotFoundError(account.id)
        return account.next_event("Deposited", {"amount": amount})

    return decide


def withdraw(amount: int) -> Callable[[Account], Event]:
    def decide(account: Account) -> Event:
        if account.version == 0:
            raise AccountNotFoundError(account.id)
        if amount > account.balance:
            raise DomainError(f"insufficient funds: balance {account.balance}, need {amount}")
        return account.next_event("Withdrawn", {"amount": amount})

    return decide


async def execute(
    store: SnapshotStore,
    account_id: str,
    decide: Callable[[Account], Event],
    expected_version: int | None = None,
) -> Account:
    """Load, decide, append; on a conflict reload and decide again.

    With *expected_version* (the version the client saw) there is no retry: a client
    working from an older state gets VersionConflictError, which becomes HTTP 409.
    """
    attempts = 1 if expected_version is not None else MAX_ATTEMPTS
    for attempt in range(1, attempts + 1):
        account = await load_account(store, account_id)
        if expected_version is not None and account.version != expected_version:
            raise VersionConflictError(account_id, expected_version + 1, account.version)
        event = decide(account)
        try:
            # The server rejects it if anyone appended since we loaded the account.
            await store.save_event(event)
        except VersionConflictError:
            if attempt == attempts:
                raise
            continue  # someone else wrote first: reload, decide again
        account.apply(event)
        if account.version - account.snapshot_version >= SNAPSHOT_EVERY:
            # An older snapshot never replaces a newer one, whoever saves it.
            await store.save_snapshot(account.snapshot())
        return account
    raise AssertionError("unreachable")


# --8<-- [end:commands]


# --8<-- [start:http]
class OpenAccount(BaseModel):
    owner: str = Field(min_length=1)


class Amount(BaseModel):
    amount: int = Field(gt=0)
    #: The account version the client based its decision on (optimistic concurrency).
    expected_version: int | None = Field(default=None, ge=0)


class AccountView(BaseModel):
    id: str
    owner: str | None
    balance: int
    version: int

    @classmethod
    def of(cls, account: Account) -> AccountView:
        return cls(
            id=account.id, owner=account.owner, balance=account.balance, version=account.version
        )


class EventView(BaseModel):
    version: int
    type: str
    data: dict[str, Any]
    timestamp: datetime


def get_store(request: Request) -> SnapshotStore:
    return cast(SnapshotStore, request.app.state.store)


Store = Annotated[SnapshotStore, Depends(get_store)]
router = APIRouter()


@router.post("/accounts/{account_id}", status_code=status.HTTP_201_CREATED)
async def create_account(account_id: str, body: OpenAccount, store: Store) -> AccountView:
    return AccountView.of(await execute(store, account_id, open_account(body.owner)))


@router.post("/accounts/{account_id}/deposits")
async def deposit_money(account_id: str, body: Amount, store: Store) -> AccountView:
    decide = deposit(body.amount)
    return AccountView.of(await execute(store, account_id, decide, body.expected_version))


@router.post("/accounts/{account_id}/withdrawals")
async def withdraw_money(account_id: str, body: Amount, store: Store) -> AccountView:
    decide = withdraw(body.amount)
    return AccountView.of(await execute(store, account_id, decide, body.expected_version))


@router.get("/accounts/{account_id}")
async def get_account(account_id: str, store: Store) -> AccountView:
    account = await load_account(store, account_id)
    if account.version == 0:
        raise AccountNotFoundError(account_id)
    return AccountView.of(account)


@router.get("/accounts/{account_id}/events")
async def get_account_events(account_id: str, store: Store) -> list[EventView]:
    return [
        EventView(version=e.version, type=e.event_type, data=e.data, timestamp=e.timestamp)
        async for e in store.iter_events(account_id)
    ]


# --8<-- [end:http]


# --8<-- [start:errors]
async def on_conflict(request: Request, exc: Exception) -> JSONResponse:
    conflict = cast(VersionConflictError, exc)
    return JSONResponse(
        {"detail": str(conflict), "current_version": conflict.current_version},
        status_code=status.HTTP_409_CONFLICT,
    )


async def on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def on_not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": f"no account {exc}"}, status_code=status.HTTP_404_NOT_FOUND)


async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
    # The outcome of a write is unknown: the client may retry the same request.
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


# --8<-- [end:errors]


# --8<-- [start:connection]
log = logging.getLogger("bank")


class ConnectionLog:
    """The NATS connection's callbacks: one log line per change, no tracebacks.

    Without an ``error_cb``, nats-py logs every error with its traceback, and while the
    server is away that is every failed reconnect attempt. Here an outage reads as a few
    lines: the error that cut the connection, "disconnected", the first failed attempt
    (repeats of the same error are not logged again), "reconnected".
    """

    def __init__(self) -> None:
        self.last_error = ""
        self.closing = False  # set at shutdown, when a disconnect is expected

    async def error(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if text != self.last_error:
            self.last_error = text
            log.warning("nats error: %s", text)

    async def disconnected(self) -> None:
        if self.closing:
            log.info("nats connection closed")
        else:
            # Requests wait for the connection; the store retries them until retry_deadline.
            log.warning("nats disconnected, reconnecting")

    async def reconnected(self) -> None:
        self.last_error = ""
        log.info("nats reconnected")


# --8<-- [end:connection]


# --8<-- [start:app]
def create_app(
    nats_url: str | None = None, *, stream_name: str = "bank", namespace: str = ""
) -> FastAPI:
    """The service. The NATS connection and the store live as long as the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = nats_url or os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
        events = ConnectionLog()
        nc = await nats.connect(
            url,
            error_cb=events.error,
            disconnected_cb=events.disconnected,
            reconnected_cb=events.reconnected,
            max_reconnect_attempts=-1,  # a service keeps trying (nats-py's default: 60)
            # ... and your own auth and TLS options
        )
        try:
            config = JetStreamConfig(namespace=namespace)
            app.state.store = await JetStreamEventStore.open(nc, stream_name, config)
            yield
        finally:
            events.closing = True
            # Drain (let in-flight requests finish) if connected; in an outage just close.
            await (nc.drain() if nc.is_connected else nc.close())

    app = FastAPI(title="bank", lifespan=lifespan)
    app.include_router(router)
    app.add_exception_handler(VersionConflictError, on_conflict)
    app.add_exception_handler(DomainError, on_domain_error)
    app.add_exception_handler(AccountNotFoundError, on_not_found)
    app.add_exception_handler(StoreUnavailableError, on_unavailable)
    return app


app = create_app()  # connects only when the server starts (lifespan)
# --8<-- [end:app]
