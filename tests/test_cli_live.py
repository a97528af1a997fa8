"""``aether tail`` and ``aether server``: long-running commands, run as real processes.

No sleeps: each test waits for a line the command prints (tail's "listening", server's
``export NATS_URL=``) or for the process to end, with generous deadlines.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import nats
import pytest

from aether import Event
from aether.cli._errors import EXIT_UNREACHABLE
from aether.testing import NatsServer

from .test_cli_commands import (
    NATS_ENV,
    Streams,
    aether,
    ev,
    json_lines,
    run,
)

DEADLINE = 30.0


@pytest.fixture(autouse=True)
def _no_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NATS_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def streams(nats_url: str) -> Iterator[Streams]:
    tracker = Streams(nats_url)
    yield tracker
    run(tracker.cleanup)


class Command:
    """``python -m aether.cli <args>`` with its stdout and stderr read line by line."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in NATS_ENV}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "aether.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.stdout: queue.Queue[str | None] = queue.Queue()
        self.stderr: queue.Queue[str | None] = queue.Queue()
        self.seen: dict[str, list[str]] = {"stdout": [], "stderr": []}
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=_pump, args=(stream, lines), daemon=True).start()

    def wait_for(self, pattern: str, *, err: bool = False) -> re.Match[str]:
        """The first line (from now on) of stdout or stderr matching *pattern*."""
        lines, name = (self.stderr, "stderr") if err else (self.stdout, "stdout")
        while True:
            try:
                line = lines.get(timeout=DEADLINE)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} within {DEADLINE}s: {self.seen}")
            if line is None:
                pytest.fail(f"{name} closed before a line matching {pattern!r}: {self.seen}")
            self.seen[name].append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit; (exit code, rest of stdout, rest of stderr)."""
        code = self.proc.wait(timeout=DEADLINE)
        return code, _drain(self.stdout), _drain(self.stderr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _drain(lines: queue.Queue[str | None]) -> str:
    out = []
    while (line := lines.get(timeout=DEADLINE)) is not None:
        out.append(line)
    return "\n".join(out)


@pytest.fixture
def command() -> Iterator[type[Command]]:
    started: list[Command] = []

    class Tracked(Command):
        def __init__(self, *args: str) -> None:
            super().__init__(*args)
            started.append(self)

    yield Tracked
    for cmd in started:
        cmd.stop()


def _append(
    url: str, stream: str, *events: tuple[str, str, dict[str, Any]], create: bool = False
) -> None:
    """``aether append`` each (actor, type, data), in order."""
    for actor, event_type, data in events:
        args = ["append", actor, event_type, "-s", stream, "--data", json.dumps(data)]
        args += ["--create"] if create else []
        result = aether(*args, url=url)
        assert result.exit_code == 0, result.output


# -- tail -------------------------------------------------------------------------------------


def test_tail_shows_new_events_and_stops_after_count(
    streams: Streams, nats_url: str, command: type[Command]
) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("old", 1)]))  # stored before: not shown
    tail = command("tail", "-s", name, "--count", "3", "--json", "--url", nats_url)
    tail.wait_for("listening for new events", err=True)
    _append(
        nats_url,
        name,
        ("a", "Deposited", {"n": 1}),
        ("b", "Deposited", {"n": 2}),
        ("a", "Deposited", {"n": 3}),
        ("c", "Deposited", {"n": 4}),
    )
    code, out, err = tail.finish()
    assert code == 0, err
    assert "Traceback" not in err
    shown = [Event.from_json(line) for line in out.splitlines()]
    assert [(e.actor_id, e.version, e.data) for e in shown] == [
        ("a", 1, {"n": 1}),
        ("b", 1, {"n": 2}),
        ("a", 2, {"n": 3}),
    ]


def test_tail_filters_by_actor_prefix_and_type(
    streams: Streams, nats_url: str, command: type[Command]
) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("x", 1)]))
    tail = command(
        "tail", "-s", name, "-n", "2", "--actor-prefix", "acct-", "--type", "Deposited",
        "--url", nats_url,
    )  # fmt: skip
    tail.wait_for("listening", err=True)
    _append(
        nats_url,
        name,
        ("other-1", "Deposited", {"n": 1}),
        ("acct-1", "Opened", {"n": 2}),
        ("acct-1", "Deposited", {"n": 3}),
        ("acct-2", "Deposited", {"n": 4}),
    )
    code, out, err = tail.finish()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert re.search(r"acct-1\s+v2\s+Deposited\s+\{\"n\":3\}$", lines[0]), lines[0]
    assert re.search(r"acct-2\s+v1\s+Deposited\s+\{\"n\":4\}$", lines[1]), lines[1]


def test_tail_from_start_in_process(streams: Streams, nats_url: str) -> None:
    # --from-start and --count end on their own: no subprocess needed.
    name = streams.name()
    history = [ev("a", 1), ev("b", 1, "Opened"), ev("a", 2), ev("ab", 1)]
    run(lambda: streams.seed(name, history))
    all_events = aether("tail", "-s", name, "--from-start", "-n", "4", "--json", url=nats_url)
    assert [(e["actorId"], e["version"]) for e in json_lines(all_events)] == [
        ("a", 1),
        ("b", 1),
        ("a", 2),
        ("ab", 1),
    ]
    one_actor = aether(
        "tail", "-s", name, "--from-start", "-n", "2", "--actor", "a", "--json", url=nats_url
    )
    assert [(e["actorId"], e["version"]) for e in json_lines(one_actor)] == [("a", 1), ("a", 2)]
    opened = aether("tail", "-s", name, "--from-start", "-n", "1", "-t", "Opened", url=nats_url)
    assert "b  v1  Opened" in opened.stdout


def test_tail_notes_malformed_messages(
    streams: Streams, nats_url: str, command: type[Command]
) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("x", 1)]))
    tail = command("tail", "-s", name, "-n", "1", "--url", nats_url)
    tail.wait_for("listening", err=True)

    async def garbage() -> None:
        async with await nats.connect(nats_url) as nc:
            await nc.jetstream().publish(f"{name}.events.x", b"garbage")

    run(garbage)
    tail.wait_for("skipped malformed message at stream sequence 2", err=True)
    _append(nats_url, name, ("x", "Deposited", {}))
    code, out, _ = tail.finish()
    assert code == 0
    assert "x  v2  Deposited" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_tail_stops_cleanly_on_ctrl_c_and_sigterm(
    streams: Streams, nats_url: str, command: type[Command], sig: signal.Signals
) -> None:
    name = streams.name()
    run(lambda: streams.seed(name, [ev("x", 1)]))
    tail = command("tail", "-s", name, "--url", nats_url)
    tail.wait_for("listening", err=True)
    tail.proc.send_signal(sig)
    code, _, err = tail.finish()
    assert code == 0, err
    assert "Traceback" not in err
    assert "Aborted" not in err


@pytest.fixture
def own_server() -> Iterator[NatsServer]:
    """A server of the test's own, to restart or stop under a running tail."""
    with NatsServer() as server:
        yield server


@pytest.mark.parametrize("shown_before", [0, 1])
def test_tail_resumes_after_a_server_restart_without_repeating(
    own_server: NatsServer, command: type[Command], shown_before: int
) -> None:
    url = own_server.url
    streams = Streams(url)
    name = streams.name()
    run(lambda: streams.seed(name, [ev("old", 1), ev("old", 2)]))  # stored before: never shown
    tail = command("tail", "-s", name, "-n", "3", "--json", "--url", url)
    tail.wait_for("listening for new events", err=True)
    new = [("a", "Deposited", {"n": n}) for n in range(1, 4)]
    _append(url, name, *new[:shown_before])
    for n in range(1, shown_before + 1):
        tail.wait_for(f'"data":{{"n":{n}}}')
    own_server.restart()
    tail.wait_for("lost the connection to NATS", err=True)
    _append(url, name, *new[shown_before:])
    code, out, err = tail.finish()
    assert code == 0, err
    assert "Traceback" not in err
    shown = [Event.from_json(line) for line in tail.seen["stdout"] + out.splitlines()]
    assert [(e.actor_id, e.version, e.data) for e in shown] == [
        ("a", 1, {"n": 1}),
        ("a", 2, {"n": 2}),
        ("a", 3, {"n": 3}),
    ]


def test_tail_fails_once_the_connection_is_closed_for_good(
    own_server: NatsServer, command: type[Command]
) -> None:
    url = own_server.url
    name = Streams(url).name()
    _append(url, name, ("a", "Deposited", {}), create=True)
    tail = command("tail", "-s", name, "--reconnect-attempts", "1", "--url", url)
    tail.wait_for("listening", err=True)
    own_server.stop()
    code, out, err = tail.finish()
    assert code == EXIT_UNREACHABLE, err
    assert out == ""
    errors = [line for line in err.splitlines() if "Error" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"Error: lost the connection to NATS at {url}"), err
    assert "and gave up after 1 reconnect attempt(s)" in errors[0]
    assert err.count("lost the connection to NATS; reconnecting") == 1, err
    assert "Traceback" not in err


def test_tail_of_a_missing_stream_is_not_found(nats_url: str) -> None:
    result = aether("tail", "-s", "no-such-stream", url=nats_url)
    assert result.exit_code == 3
    assert result.stderr.strip() == (
        "Error: stream 'no-such-stream' not found (`aether streams` lists the event streams)"
    )


# -- server -----------------------------------------------------------------------------------


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_server_runs_until_sigterm_and_removes_its_temp_data(command: type[Command]) -> None:
    server = command("server", "--port", "0")
    data = server.wait_for(r"^JetStream data: (\S+) \(temporary")
    url = server.wait_for(r"^export NATS_URL=(nats://127\.0\.0\.1:(\d+))$")
    appended = aether("append", "acc", "Opened", "--create", url=url[1])
    assert appended.exit_code == 0, appended.output
    assert Path(data[1]).is_dir()
    server.proc.send_signal(signal.SIGTERM)
    code, _, err = server.finish()
    assert code == 0, err
    assert "nats-server stopped" in err
    assert not _port_open(int(url[2]))
    assert not Path(data[1]).exists()


@pytest.mark.slow
def test_server_keeps_data_dir_across_runs(command: type[Command], tmp_path: Path) -> None:
    data_dir = tmp_path / "nats-data"
    for run_number in (1, 2):
        server = command("server", "--port", "0", "--data-dir", str(data_dir))
        server.wait_for(rf"^JetStream data: {re.escape(str(data_dir))} \(kept\)")
        url = server.wait_for(r"^export NATS_URL=(\S+)$")[1]
        appended = aether("append", "acc", "Deposited", "--create", url=url)
        assert f"as version {run_number} " in appended.stdout, appended.output
        server.proc.send_signal(signal.SIGINT)
        code, _, err = server.finish()
        assert code == 0, err
    assert data_dir.is_dir()


def test_server_port_in_use_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = aether("server", "--port", str(port))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: could not start nats-server: port {port} is in use (pass --port, or --port 0)"
    )
