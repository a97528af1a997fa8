"""examples/eventsourcing_bank.py runs, as a user runs it, against a real nats-server.

The how-to (docs/howto/eventsourcing.md) includes regions of it verbatim.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import uuid
from pathlib import Path

import nats
import nats.js.errors
import pytest

pytest.importorskip("eventsourcing")  # the "eventsourcing" extra (part of "dev")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "eventsourcing_bank.py"
TIMEOUT = 240  # a hang fails here rather than at pytest-timeout


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )


async def stream_names(url: str, prefix: str) -> list[str]:
    async with await nats.connect(url) as nc:
        js = nc.jetstream()
        names = sorted(s.config.name for s in await js.streams_info() if s.config.name)
        return [name for name in names if name.startswith(prefix)]


async def delete_streams(url: str, names: list[str]) -> None:
    async with await nats.connect(url) as nc:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)


def check_output(stdout: str) -> None:
    lines = stdout.splitlines()
    assert "refused: Bob has 30.00" in lines
    assert "balances: Alice 70.00, Bob 30.00" in lines
    assert "statement of Alice: ['100.00', '-30.00']" in lines
    assert "conflict: IntegrityError, reloading and retrying" in lines
    log = [line.split() for line in lines if line.startswith("  ")]
    assert [int(n) for n, _ in log] == list(range(1, 8))  # contiguous from 1
    assert [topic for _, topic in log] == ["Opened"] * 2 + ["TransactionAppended"] * 5
    assert "snapshots of Alice at versions [5]" in lines
    assert "after a restart: Alice 73.00, Bob 35.00" in lines
    assert "notification ids go on: 7 -> 8" in lines
    assert lines[-1] == "done"


@pytest.mark.slow
def test_bank_example_on_the_session_server(nats_url: str) -> None:
    prefix = f"bank-{uuid.uuid4().hex[:8]}-"
    try:
        result = run_example("--url", nats_url, "--prefix", prefix)
        assert result.returncode == 0, result.stdout + result.stderr
        check_output(result.stdout)
        streams = asyncio.run(stream_names(nats_url, prefix))
        assert streams == [
            f"{prefix}BankAccounts",
            f"{prefix}BankAccounts_snapshots",
            f"{prefix}Statements",  # no snapshotting: no snapshots stream
            f"{prefix}Statements_tracking",
        ]
    finally:
        asyncio.run(delete_streams(nats_url, asyncio.run(stream_names(nats_url, prefix))))


@pytest.mark.slow
def test_bank_example_on_its_own_server() -> None:
    """Without --url it starts a nats-server of its own (the documented default)."""
    result = run_example()
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("started nats-server at nats://")
    check_output(result.stdout)
