"""A NATS-aware TCP proxy that loses acknowledgements on purpose (fault tests).

It sits between a client and one or more real ``nats-server`` processes and forwards the
bytes both ways, frame by frame (it parses the NATS text protocol, so it knows where each
operation and its payload end). Armed with :meth:`NatsProxy.cut_after_publish`, it makes
the one failure a writer can never rule out: the publish reaches the server and is
processed there, but the connection dies before the acknowledgement comes back.

How a cut goes, on the connection that sends the armed publish:

1. the client sends ``PUB``/``HPUB <subject> <reply> ...`` with a matching subject: the
   proxy notes the reply subject and forwards the frame to the server;
2. from then on it withholds everything the server sends to that client;
3. when the server's answer (``MSG``/``HMSG <reply> ...``) arrives, the publish has
   provably been processed, so the proxy closes both sockets without delivering it
   (and drops everything withheld, as a real cut would).

A "no responders" answer (status 503: no stream took the publish) is not an
acknowledgement: it is delivered, and the arming waits for the next matching publish.
If no answer comes within ``ack_timeout`` the proxy gives up: it delivers what it held
and counts the attempt in ``stats.gave_up``, so a test fails on its counters, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlparse

_CRLF = b"\r\n"
_READ_SIZE = 64 * 1024
_LOOPBACK = "127.0.0.1"
# Operations followed by a payload of a byte length given in their control line.
_WITH_PAYLOAD = frozenset({"PUB", "HPUB", "MSG", "HMSG"})


@dataclass(frozen=True, slots=True)
class Frame:
    """One complete protocol operation: its control line's verb and arguments, the raw
    bytes (control line, payload and the CRLFs) and, for PUB/HPUB/MSG/HMSG, the payload."""

    op: str
    args: tuple[str, ...]
    raw: bytes
    payload: bytes = b""

    @property
    def reply(self) -> str | None:
        """The reply subject of a PUB/HPUB/MSG/HMSG, or None if it has none."""
        # PUB subj [reply] n | HPUB subj [reply] hdr total
        # MSG subj sid [reply] n | HMSG subj sid [reply] hdr total
        with_reply = {"PUB": 3, "HPUB": 4, "MSG": 4, "HMSG": 5}.get(self.op)
        if with_reply is None or len(self.args) != with_reply:
            return None
        return self.args[1] if self.op in ("PUB", "HPUB") else self.args[2]

    @property
    def body(self) -> bytes:
        """The payload without the headers (HPUB/HMSG carry ``hdr_len`` header bytes)."""
        if self.op in ("HPUB", "HMSG"):
            return self.payload[int(self.args[-2]) :]
        return self.payload

    @property
    def status(self) -> str | None:
        """The status code of an HPUB/HMSG header block (``NATS/1.0 503``), if any."""
        if self.op not in ("HPUB", "HMSG"):
            return None
        first_line = self.payload[: int(self.args[-2])].split(_CRLF, 1)[0]
        parts = first_line.split()
        return parts[1].decode("ascii", "replace") if len(parts) > 1 else None


class FrameParser:
    """Splits a byte stream into :class:`Frame` objects, whatever the read boundaries.

    Control lines may arrive split across reads, and payloads (whose byte length is the
    last argument of PUB/HPUB/MSG/HMSG) may contain CRLF; incomplete data is kept until
    the rest arrives.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add *data*; return every frame now complete, in order."""
        self._buffer += data
        frames: list[Frame] = []
        start = 0
        buffer = self._buffer
        while True:
            end_of_line = buffer.find(_CRLF, start)
            if end_of_line < 0:
                break
            line = bytes(buffer[start:end_of_line])
            verb, _, rest = line.partition(b" ")
            op = verb.strip().upper().decode("ascii", "replace")
            end = end_of_line + 2
            payload = b""
            args: tuple[str, ...]
            if op in _WITH_PAYLOAD:
                args = tuple(rest.decode().split())
                size = int(args[-1])
                if len(buffer) < end + size + 2:
                    break  # the payload is not all here yet
                payload = bytes(buffer[end : end + size])
                end += size + 2
            else:
                # INFO/CONNECT carry JSON with spaces: keep it as one argument.
                args = (rest.decode("utf-8", "replace"),) if rest else ()
            frames.append(Frame(op, args, bytes(buffer[start:end]), payload))
            start = end
        del buffer[:start]
        return frames


@dataclass
class ProxyStats:
    """What the proxy did. Assert on these: the fault must really have happened."""

    #: client connections accepted (the first one and every reconnect)
    connections: int = 0
    #: connections cut after an armed publish was answered
    cuts: int = 0
    #: answers to armed publishes that were never delivered (one per cut)
    acks_dropped: int = 0
    #: other server->client frames withheld and then lost in cuts (answers to other
    #: requests in flight on the same connection, pings, ...)
    withheld_dropped: int = 0
    #: armed publishes that got no answer within ``ack_timeout`` (no cut was made)
    gave_up: int = 0
    #: armed publishes answered "no responders" (503: no stream got them); not cut, and the
    #: arming stays for the next matching publish (the client's retry)
    no_responders: int = 0
    #: server INFO lines from which ``connect_urls`` were removed
    info_rewrites: int = 0
    #: the dropped answers themselves (``.body`` is e.g. a JetStream PubAck)
    dropped_acks: list[Frame] = field(default_factory=list)


class _Link:
    """One proxied client connection and its upstream connection."""

    def __init__(
        self,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        #: reply subject of the armed publish whose answer we wait for, if any
        self.target: str | None = None
        self.held: list[bytes] = []
        self.closed = False
        self.give_up_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.give_up_timer is not None:
            self.give_up_timer.cancel()
        for writer in (self.client_writer, self.server_writer):
            writer.close()


class NatsProxy:
    """A TCP proxy on 127.0.0.1 in front of nats-servers, able to cut a connection after a
    publish was processed but before its acknowledgement reaches the client.

    One listening port (free, chosen by the OS) per upstream: ``urls[i]`` leads to
    ``upstreams[i]``. Arming is shared by all ports and connections.

    ``strip_connect_urls`` (the default) removes ``connect_urls`` from the servers'
    ``INFO``: nats-py adds every URL it learns there to its server pool and may reconnect
    to a cluster node *directly*, bypassing the proxy (nats-py has no option to ignore
    discovered servers). Without them, the client only knows ``urls``, so every
    connection and reconnect goes through the proxy.

    Use it as an async context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        upstreams: Sequence[str],
        *,
        strip_connect_urls: bool = True,
        ack_timeout: float = 10.0,
    ) -> None:
        if not upstreams:
            raise ValueError("NatsProxy needs at least one upstream URL")
        self._upstreams = [_host_port(url) for url in upstreams]
        self._strip_connect_urls = strip_connect_urls
        self._ack_timeout = ack_timeout
        self._listeners: list[asyncio.Server] = []
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._prefix = ""
        self._remaining = 0
        self._cut_changed: asyncio.Condition | None = None
        self._partitioned = False
        self.urls: list[str] = []
        self.stats = ProxyStats()
        #: set at every cut (clear it yourself to wait for the next one)
        self.cut_happened = asyncio.Event()

    async def start(self) -> Self:
        """Listen on one free loopback port per upstream."""
        self._cut_changed = asyncio.Condition()
        for host, port in self._upstreams:
            listener = await asyncio.start_server(
                functools.partial(self._accept, host=host, port=port), _LOOPBACK, 0
            )
            self._listeners.append(listener)
            own_port = listener.sockets[0].getsockname()[1]
            self.urls.append(f"nats://{_LOOPBACK}:{own_port}")
        return self

    async def close(self) -> None:
        """Stop listening and close every proxied connection (idempotent)."""
        for listener in self._listeners:
            listener.close()
        for link in list(self._links):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def cut_after_publish(self, subject_prefix: str, count: int = 1) -> None:
        """Arm: cut the connection of each of the next *count* publishes (with a reply
        subject) whose subject starts with *subject_prefix*, once the server answered.

        Replaces any earlier arming. Publishes without a reply (the non-final messages of
        an atomic batch) go through untouched; the batch's commit, a request, is cut.
        """
        if count < 0:
            raise ValueError("count must not be negative")
        self._prefix = subject_prefix
        self._remaining = count

    def partition(self) -> None:
        """Close every proxied connection now and refuse new ones until :meth:`heal`:
        the clients behind the proxy hear nothing of what happens meanwhile."""
        self._partitioned = True
        for link in list(self._links):
            link.close()

    def heal(self) -> None:
        """Accept connections again (the clients reconnect)."""
        self._partitioned = False

    @property
    def armed(self) -> int:
        """How many cuts are still to come from the current arming."""
        return self._remaining

    async def wait_cuts(self, total: int) -> None:
        """Wait until ``stats.cuts >= total`` (bound it with ``asyncio.timeout``)."""
        assert self._cut_changed is not None, "start() the proxy first"
        condition = self._cut_changed
        async with condition:
            await condition.wait_for(lambda: self.stats.cuts >= total)

    # -- plumbing -------------------------------------------------------------------------

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self._partitioned:
                writer.close()
                return
            try:
                upstream = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return
            self.stats.connections += 1
            link = _Link((reader, writer), upstream)
            self._links.add(link)
            try:
                await asyncio.gather(self._client_to_server(link), self._server_to_client(link))
            finally:
                link.close()
                self._links.discard(link)
        finally:
            self._tasks.discard(task)

    async def _client_to_server(self, link: _Link) -> None:
        parser = FrameParser()
        with contextlib.suppress(ConnectionError, OSError):
            while not link.closed:
                data = await link.client_reader.read(_READ_SIZE)
                if not data or link.closed:
                    break
                out: list[bytes] = []
                for frame in parser.feed(data):
                    if link.target is None and self._remaining > 0 and self._matches(frame):
                        self._remaining -= 1
                        link.target = frame.reply
                        link.give_up_timer = asyncio.get_running_loop().call_later(
                            self._ack_timeout, self._give_up, link
                        )
                    out.append(frame.raw)
                link.server_writer.write(b"".join(out))
                await link.server_writer.drain()
        link.close()

    async def _server_to_client(self, link: _Link) -> None:
        parser = FrameParser()
        with contextlib.suppress(ConnectionError, OSError):
            while not link.closed:
                data = await link.server_reader.read(_READ_SIZE)
                if not data or link.closed:
                    break
                out: list[bytes] = []
                for frame in parser.feed(data):
                    raw = self._rewrite_info(frame) if frame.op == "INFO" else frame.raw
                    if link.target is None:
                        out.append(raw)
                    elif frame.op in ("MSG", "HMSG") and frame.args[0] == link.target:
                        if frame.status == "503":
                            # "No responders": no stream got the publish (in a cluster, the
                            # stream's interest may not have reached this node yet). Not an
                            # acknowledgement: deliver everything and wait for the next one.
                            out += self._disarm(link)
                            out.append(raw)
                            self._remaining += 1
                            self.stats.no_responders += 1
                            continue
                        # The answer to the armed publish: the server processed it.
                        await self._cut(link, frame)
                        return
                    else:
                        link.held.append(raw)
                if out:
                    link.client_writer.write(b"".join(out))
                    await link.client_writer.drain()
        link.close()

    def _matches(self, frame: Frame) -> bool:
        return (
            frame.op in ("PUB", "HPUB")
            and frame.reply is not None
            and frame.args[0].startswith(self._prefix)
        )

    async def _cut(self, link: _Link, ack: Frame) -> None:
        self.stats.cuts += 1
        self.stats.acks_dropped += 1
        self.stats.withheld_dropped += len(link.held)
        self.stats.dropped_acks.append(ack)
        link.held.clear()
        link.target = None
        link.close()  # both sockets: the client sees the connection die, unanswered
        self.cut_happened.set()
        assert self._cut_changed is not None
        async with self._cut_changed:
            self._cut_changed.notify_all()

    def _give_up(self, link: _Link) -> None:
        """No answer to the armed publish in time: deliver what was held, cut nothing."""
        if link.closed or link.target is None:
            return
        self.stats.gave_up += 1
        link.client_writer.write(b"".join(self._disarm(link)))

    @staticmethod
    def _disarm(link: _Link) -> list[bytes]:
        """Stop waiting for an answer on *link*; return the frames held meanwhile."""
        if link.give_up_timer is not None:
            link.give_up_timer.cancel()
            link.give_up_timer = None
        link.target = None
        held, link.held = link.held, []
        return held

    def _rewrite_info(self, frame: Frame) -> bytes:
        if not self._strip_connect_urls or not frame.args:
            return frame.raw
        info: dict[str, Any] = json.loads(frame.args[0])
        if "connect_urls" not in info and "ws_connect_urls" not in info:
            return frame.raw
        info.pop("connect_urls", None)
        info.pop("ws_connect_urls", None)
        self.stats.info_rewrites += 1
        return b"INFO " + json.dumps(info, separators=(",", ":")).encode() + _CRLF


def _host_port(url: str) -> tuple[str, int]:
    parsed = urlparse(url if "://" in url else f"nats://{url}")
    if parsed.hostname is None or parsed.port is None:
        raise ValueError(f"upstream {url!r} needs a host and a port")
    return parsed.hostname, parsed.port
