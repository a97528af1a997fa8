"""The README's Quick start works exactly as printed, after the README's first command.

A newcomer runs ``aether server``, copies the ``export NATS_URL=...`` line it prints, and
runs the Quick start program. This test does the same: it starts ``aether server`` (the
console script the README's first command installs), takes the URL from that line, and
runs the README's Quick start block, extracted unchanged, with ``NATS_URL`` set. Only the
port differs from a newcomer's: ``--port 0`` (any free port), so the test never collides
with a server already on 4222, which is the case the ``NATS_URL`` line is there for.
"""

from __future__ import annotations

import asyncio
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from aether import Event
from aether.store import JetStreamConfig, JetStreamEventStore

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEADLINE = 60.0
NATS_ENV = ("NATS_URL", "NATS_CREDS", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN")


def quick_start_program() -> str:
    """The first ``python`` block of the README's ``## Quick start`` section, unchanged."""
    text = README.read_text("utf-8")
    section = re.search(r"^## Quick start\n(.*?)^## ", text, re.DOTALL | re.MULTILINE)
    assert section is not None, "README.md has no '## Quick start' section"
    block = re.search(r"^```python\n(.*?)^```$", section[1], re.DOTALL | re.MULTILINE)
    assert block is not None, "the Quick start has no python block"
    return block[1]


def aether_command() -> list[str]:
    """``aether``, as the README's first command installs it next to the interpreter."""
    script = Path(sys.executable).parent / "aether"
    if script.is_file():
        return [str(script)]
    found = shutil.which("aether")
    return [found] if found else [sys.executable, "-m", "aether"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in NATS_ENV}


@pytest.fixture
def aether_server() -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``aether server --port 0`` and the ``export NATS_URL=...`` line it printed."""
    proc = subprocess.Popen(
        [*aether_command(), "server", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_clean_env(),
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        seen: list[str] = []
        while True:
            line = lines.get(timeout=DEADLINE)
            if line is None:
                pytest.fail(f"aether server ended before printing export NATS_URL=: {seen}")
            seen.append(line)
            if line.startswith("export NATS_URL="):
                break
        yield proc, line
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C, as the newcomer stops it
        try:
            proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_quick_start_runs_as_printed_against_aether_server(
    aether_server: tuple[subprocess.Popen[str], str], tmp_path: Path
) -> None:
    _, export_line = aether_server
    url = export_line.removeprefix("export NATS_URL=")
    assert re.fullmatch(r"nats://127\.0\.0\.1:\d+", url), export_line

    program = tmp_path / "quickstart.py"
    program.write_text(quick_start_program(), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        env=_clean_env() | {"NATS_URL": url},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # It says: deposit 10 into account-42 of store "bank" in namespace "tenant-a", then
    # print the account's history.
    assert result.stdout == "1 Deposited {'amount': 10}\n"

    async def stored() -> list[Event]:
        async with await nats.connect(url) as nc:
            config = JetStreamConfig(namespace="tenant-a")
            async with await JetStreamEventStore.attach(nc, "bank", config) as store:
                return await store.get_events("account-42")

    history = asyncio.run(stored())
    assert [(e.event_type, e.actor_id, e.version, e.data) for e in history] == [
        ("Deposited", "account-42", 1, {"amount": 10})
    ]


def test_the_quick_start_reads_nats_url() -> None:
    program = quick_start_program()
    assert 'os.environ.get("NATS_URL", "nats://127.0.0.1:4222")' in program
    assert "nats.connect(url)" in program
