"""``aether demo``, run as a real console command in a subprocess, and its audit logic."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from aether import Event
from aether.cli._audit import check
from aether.cli._demo_writer import Ack
from aether.replay import ReplayError, ReplayResult

SMALL = ["-p", "2", "-a", "3", "-n", "40"]
RUN_TIMEOUT = 90


def _env() -> dict[str, str]:
    """The test's environment without NATS_URL, so "no --url" really means embedded."""
    return {k: v for k, v in os.environ.items() if k != "NATS_URL"}


def _aether(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aether.cli", *args],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=env if env is not None else _env(),
    )


def _assert_passed(result: subprocess.CompletedProcess[str]) -> None:
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    assert "audit: PASS" in out
    assert "FAIL" not in out
    for field in (
        "events/s",
        "conflicts detected and retried:",
        "stale-cache repairs",
        "cache hits",
        "final versions: acct-1=",
        "unknown outcomes (StoreUnavailableError): 0",
    ):
        assert field in out, f"{field!r} missing from:\n{out}"


def _written(out: str) -> int:
    match = re.search(r"^wrote ([\d,]+) events", out, re.MULTILINE)
    assert match, out
    return int(match.group(1).replace(",", ""))


@pytest.mark.slow
async def test_demo_against_a_running_server(nats_url: str) -> None:
    result = _aether("demo", "--url", nats_url, *SMALL)
    _assert_passed(result)
    out = result.stdout
    assert "(--url)" in out
    assert _written(out) >= 2 * 40  # the processes' appends, plus the outside writer's
    final = dict(re.findall(r"(acct-\d+)=(\d+)", out))
    assert sorted(final) == ["acct-1", "acct-2", "acct-3"]
    assert sum(int(v) for v in final.values()) == _written(out)
    # The demo's streams are deleted from a server it does not own.
    match = re.search(r"stream (demo_[0-9a-f]+)", out)
    assert match, out
    async with await nats.connect(nats_url) as nc:
        streams = await nc.jetstream().streams_info()
        assert not [s for s in streams if (s.config.name or "").startswith(match.group(1))]


@pytest.mark.slow
async def test_demo_keep_stream_and_no_outside_writer(nats_url: str) -> None:
    result = _aether(
        "demo",
        "--url",
        nats_url,
        "-p",
        "1",
        "-a",
        "1",
        "-n",
        "20",
        "--no-outside-writer",
        "--keep-stream",
    )
    _assert_passed(result)
    assert _written(result.stdout) == 20
    assert "final versions: acct-1=20" in result.stdout
    match = re.search(r"stream (demo_[0-9a-f]+)", result.stdout)
    assert match, result.stdout
    async with await nats.connect(nats_url) as nc:
        js = nc.jetstream()
        info = await js.stream_info(match.group(1))
        assert info.state.messages == 20
        for name in (match.group(1), f"{match.group(1)}_snapshots"):
            await js.delete_stream(name)


@pytest.mark.slow
def test_demo_with_embedded_server() -> None:
    result = _aether("demo", *SMALL)
    _assert_passed(result)
    match = re.search(r"at nats://127\.0\.0\.1:(\d+) \(embedded\)", result.stdout)
    assert match, result.stdout
    # The embedded server was stopped on exit.
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", int(match[1])), 1):
        pass


@pytest.mark.parametrize("via", ["--url", "NATS_URL"])
def test_unreachable_server_is_one_line_and_exit_7(via: str) -> None:
    url = "nats://127.0.0.1:1"
    if via == "--url":
        result = _aether("demo", "--url", url)
    else:
        result = _aether("demo", env={**_env(), "NATS_URL": url})
    assert result.returncode == 7, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot connect to NATS at nats://127.0.0.1:1" in lines[0]
    assert "Traceback" not in result.stderr


def test_help_lists_demo() -> None:
    result = _aether("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout
    result = _aether("demo", "--help")
    assert result.returncode == 0
    for option in ("--url", "--processes", "--accounts", "--events", "--timeout"):
        assert option in result.stdout


# -- interruption: nothing is left running --------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def long_demo() -> Iterator[subprocess.Popen[str]]:
    """A demo that runs for a long time, started and waited for until its workers run."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "aether.cli", "demo", "-p", "2", "-n", "1000000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        # The first progress line means the workers are appending (the race is on).
        for line in proc.stdout:
            if "process appends" in line:
                break
        else:
            pytest.fail("the demo ended before its workers made progress")
        # The embedded server, the resource tracker and two workers.
        assert len(_children(proc.pid)) >= 4
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def _wait_gone(pids: list[int], within: float) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        if not alive:
            return []
        time.sleep(0.05)
    return alive


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_stops_workers_and_embedded_server(long_demo: subprocess.Popen[str]) -> None:
    children = _children(long_demo.pid)
    long_demo.send_signal(signal.SIGTERM)
    _, err = long_demo.communicate(timeout=30)
    assert long_demo.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err, err
    assert _wait_gone(children, 10) == []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_exit_when_the_parent_is_killed(long_demo: subprocess.Popen[str]) -> None:
    children = _children(long_demo.pid)
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 2
    server = [pid for pid in children if "nats-server" in Path(f"/proc/{pid}/cmdline").read_text()]
    long_demo.kill()
    long_demo.wait(timeout=10)
    try:
        assert _wait_gone(workers, 10) == []
    finally:
        for pid in server:  # a SIGKILLed parent cannot stop its embedded server
            os.kill(pid, signal.SIGKILL)


# -- the audit itself: it must catch what it claims to ------------------------------------


def _history(*events: Event) -> ReplayResult:
    return ReplayResult(events=list(events))


def _ev(account: str, version: int, event_id: str) -> Event:
    return Event(event_type="Deposited", actor_id=account, version=version, id=event_id)


def test_audit_passes_on_exact_history() -> None:
    histories = {"a": _history(_ev("a", 1, "x"), _ev("a", 2, "y")), "b": _history()}
    acked = [Ack("x", "a", 1), Ack("y", "a", 2)]
    result = check(histories, acked, [])
    assert result.passed, result.problems
    assert result.final_versions == {"a": 2, "b": 0}
    assert result.stored == result.acknowledged == 2


def test_audit_counts_an_unknown_outcome_that_landed_apart() -> None:
    histories = {"a": _history(_ev("a", 1, "x"), _ev("a", 2, "u"))}
    result = check(histories, [Ack("x", "a", 1)], [Ack("u", "a", 2), Ack("v", "a", 3)])
    assert result.passed, result.problems
    assert (result.unknown, result.unknown_stored) == (2, 1)


@pytest.mark.parametrize(
    ("events", "acked", "expected"),
    [
        ([("a", 1, "x"), ("a", 1, "y")], [("x", "a", 1), ("y", "a", 1)], "duplicate versions 1"),
        ([("a", 1, "x"), ("a", 3, "y")], [("x", "a", 1), ("y", "a", 3)], "missing versions 2"),
        ([("a", 1, "x")], [("x", "a", 1), ("y", "a", 2)], "acknowledged event(s) missing"),
        ([("a", 1, "x"), ("a", 2, "z")], [("x", "a", 1)], "nobody acknowledged"),
        ([("a", 1, "x"), ("a", 2, "x")], [("x", "a", 1)], "stored more than once"),
        ([("a", 1, "x")], [("x", "a", 2)], "another account/version"),
    ],
)
def test_audit_fails_on_bad_history(
    events: list[tuple[str, int, str]], acked: list[tuple[str, str, int]], expected: str
) -> None:
    histories = {"a": _history(*(_ev(*e) for e in events))}
    result = check(histories, [Ack(*a) for a in acked], [])
    assert not result.passed
    assert any(expected in problem for problem in result.problems), result.problems


def test_audit_fails_on_malformed_messages() -> None:
    history = ReplayResult(
        events=[_ev("a", 1, "x")], errors=[ReplayError(7, b"junk", ValueError("bad"))]
    )
    result = check({"a": history}, [Ack("x", "a", 1)], [])
    assert result.problems == ["a: 1 malformed message(s)"]
