"""A candidate of the cross-process election tests (``tests/test_cluster_election.py``).

Run as ``python -m tests._election_process OUT NODE GROUP BUCKET LEASE REPLICAS URL...``.
It connects to the URLs (reconnecting for ever), enters a
:class:`~aether.cluster.LeaderElection` and prints ``ready``. From then on it appends
JSON lines to OUT, each written and flushed at once (so a SIGKILL loses nothing already
seen), all times being :func:`time.monotonic` (one clock for every process of the
machine):

- ``{"ev": "elected", "node", "term", "t"}``: from ``on_elected``;
- ``{"ev": "claim", "node", "term", "until"}``: each new ``valid_until`` it reads: it
  acts as leader up to that instant unless told otherwise;
- ``{"ev": "act", "node", "term", "t"}``: it read ``is_leader == True`` at ``t`` (read
  ``t`` first, then ``is_leader``), every 20 ms while it leads, as a leader doing work
  would;
- ``{"ev": "deposed", "node", "term", "t"}``: from ``on_deposed``;
- ``{"ev": "woke", "node", "term", "t", "leading"}``: what ``is_leader`` read on
  SIGCONT, first thing: a Python signal handler runs as soon as the main thread is back
  in the interpreter, before the event loop runs any timer, renewal or other task (an
  ``act`` is recorded too if it read True);
- ``{"ev": "resigned", "node", "t"}``: after SIGTERM made it leave the election cleanly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from datetime import timedelta
from typing import IO, Any

import nats

from aether.cluster import LeaderElection

POLL = 0.02


def writer(out: IO[str], node: str) -> Any:
    def write(ev: str, **fields: object) -> None:
        out.write(json.dumps({"ev": ev, "node": node, **fields}) + "\n")
        out.flush()

    return write


async def main(
    out_path: str, node: str, group: str, bucket: str, lease: float, replicas: int, urls: list[str]
) -> None:
    async def ignore(_: Exception) -> None:
        pass

    nc = await nats.connect(
        servers=urls,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.1,
        connect_timeout=2,
        error_cb=ignore,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    with open(out_path, "a", encoding="utf-8") as out:  # noqa: ASYNC230 (a local file)
        write = writer(out, node)
        election = LeaderElection(
            nc,
            node,
            group=group,
            bucket=bucket,
            lease=timedelta(seconds=lease),
            replicas=replicas,
            on_elected=lambda term: write("elected", term=term, t=time.monotonic()),
            on_deposed=lambda term: write("deposed", term=term, t=time.monotonic()),
        )

        def woke(signum: int, frame: object) -> None:
            t = time.monotonic()
            leading = election.is_leader
            write("woke", term=election.term, t=t, leading=leading)
            if leading:
                write("act", term=election.term, t=t)

        signal.signal(signal.SIGCONT, woke)
        async with election:
            print("ready", flush=True)
            claimed: float | None = None
            while not stop.is_set():
                t = time.monotonic()
                leading = election.is_leader
                until = election.valid_until
                if until is not None and until != claimed:
                    write("claim", term=election.term, until=until)
                    claimed = until
                if leading:
                    write("act", term=election.term, t=t)
                try:
                    async with asyncio.timeout(POLL):
                        await stop.wait()
                except TimeoutError:
                    pass
        write("resigned", t=time.monotonic())
    await nc.close()


if __name__ == "__main__":
    out, node, group, bucket, lease, replicas, *urls = sys.argv[1:]
    asyncio.run(main(out, node, group, bucket, float(lease), int(replicas), urls))
